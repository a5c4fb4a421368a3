// The man pages against the code, so they cannot drift: every command and
// option that `sockrelay --help` and `sockrelay COMMAND --help` list is
// documented in sockrelay(8) and every option documented there exists; every
// key the config checker accepts (config_keys()) is documented in
// sockrelay.toml(5) and every key documented there exists; every example
// config in sockrelay.toml(5) is one `check` accepts.
//
// What the scdoc sources look like to this test: a command's section starts
// at "## sockrelay COMMAND", the global options' at "# OPTIONS", a table's at
// "## [TABLE]" or "## [[TABLE]]"; each ends at the next heading. An option
// is documented by a line starting "*--name*", a key by one starting
// "*name* = ".
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "config/config.h"

namespace sockrelay {
namespace {

std::filesystem::path man_dir() {
  // tests/unit/man_pages_test.cpp -> <repo>/man
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "man";
}

std::vector<std::string> read_lines(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The lines after `heading` up to the next heading; empty if it is missing.
std::vector<std::string> section(const std::vector<std::string>& page, const std::string& heading) {
  std::vector<std::string> out;
  bool inside = false;
  for (const std::string& line : page) {
    if (!line.empty() && line[0] == '#') {
      if (inside) break;
      inside = line == heading;
      continue;
    }
    if (inside) out.push_back(line);
  }
  return out;
}

// The first capture of `pattern` (matched at the start of a line) in each line.
std::set<std::string> definitions(const std::vector<std::string>& lines, const std::regex& pattern) {
  std::set<std::string> out;
  std::smatch m;
  for (const std::string& line : lines) {
    if (std::regex_search(line, m, pattern, std::regex_constants::match_continuous)) out.insert(m[1]);
  }
  return out;
}

// What `sockrelay ARGS` prints on stdout.
std::string sockrelay_output(const std::string& args) {
  std::string cmd = std::string(SOCKRELAY_BINARY) + " " + args + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return {};
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  pclose(p);
  return out;
}

// The first word of each line of the help's `block` ("Commands:", "Options:")
// that starts with exactly two spaces: commands, or options with "--".
std::set<std::string> help_block(const std::string& help, const std::string& block) {
  std::set<std::string> out;
  std::istringstream in(help);
  bool inside = false;
  std::smatch m;
  static const std::regex entry("^  ([a-z-][a-z-]*)");
  for (std::string line; std::getline(in, line);) {
    if (line == block) {
      inside = true;
    } else if (inside && line.empty()) {
      break;
    } else if (inside && std::regex_search(line, m, entry)) {
      out.insert(m[1]);
    }
  }
  return out;
}

const std::regex kOptionLine(R"(\*(--[a-z][a-z-]*)\*)");
const std::regex kKeyLine(R"(\*([a-z][a-z-]*)\* = )");

std::vector<std::string> commands() {
  std::set<std::string> c = help_block(sockrelay_output("--help"), "Commands:");
  return {c.begin(), c.end()};
}

TEST(ManPages, EveryCommandHasASectionInSockrelay8) {
  const auto page = read_lines(man_dir() / "sockrelay.8.scd");
  ASSERT_FALSE(page.empty()) << man_dir() / "sockrelay.8.scd";
  const auto cmds = commands();
  ASSERT_GE(cmds.size(), 4u) << "`sockrelay --help` lists no commands:\n" << sockrelay_output("--help");
  for (const std::string& c : cmds)
    EXPECT_FALSE(section(page, "## sockrelay " + c).empty())
        << "man/sockrelay.8.scd: no \"## sockrelay " << c << "\"";
}

TEST(ManPages, EveryOptionIsInSockrelay8AndNoMore) {
  const auto page = read_lines(man_dir() / "sockrelay.8.scd");
  struct Part {
    std::string command;  // empty: the global options
    std::string heading;
    std::string help_args;
  };
  std::vector<Part> parts = {{"", "# OPTIONS", "--help"}};
  for (const std::string& c : commands()) parts.push_back({c, "## sockrelay " + c, c + " --help"});
  for (const Part& part : parts) {
    const std::set<std::string> in_code = help_block(sockrelay_output(part.help_args), "Options:");
    const std::set<std::string> in_man = definitions(section(page, part.heading), kOptionLine);
    EXPECT_FALSE(in_code.empty()) << "`sockrelay " << part.help_args << "` lists no options";
    for (const std::string& o : in_code)
      EXPECT_TRUE(in_man.count(o)) << "`sockrelay " << part.help_args << "` lists " << o
                                   << ", man/sockrelay.8.scd \"" << part.heading << "\" does not document it";
    for (const std::string& o : in_man) {
      EXPECT_TRUE(in_code.count(o)) << "man/sockrelay.8.scd \"" << part.heading << "\" documents " << o
                                    << ", `sockrelay " << part.help_args << "` does not list it";
    }
  }
}

TEST(ManPages, EveryConfigKeyIsInSockrelayToml5AndNoMore) {
  const auto page = read_lines(man_dir() / "sockrelay.toml.5.scd");
  ASSERT_FALSE(page.empty()) << man_dir() / "sockrelay.toml.5.scd";
  std::set<std::string> tables;
  for (const ConfigTableKeys& t : config_keys()) {
    if (t.table.empty()) continue;
    const std::string table(t.table);
    tables.insert(table);
    auto lines = section(page, "## [" + table + "]");
    if (lines.empty()) lines = section(page, "## [[" + table + "]]");
    ASSERT_FALSE(lines.empty()) << "man/sockrelay.toml.5.scd: no \"## [" << table << "]\"";
    const std::set<std::string> in_man = definitions(lines, kKeyLine);
    std::set<std::string> in_code(t.keys.begin(), t.keys.end());
    for (const std::string& k : in_code)
      EXPECT_TRUE(in_man.count(k)) << "[" << table << "] accepts " << k
                                   << ", sockrelay.toml(5) does not document it";
    for (const std::string& k : in_man)
      EXPECT_TRUE(in_code.count(k)) << "sockrelay.toml(5) documents " << k << " in [" << table
                                    << "], the checker does not accept it";
  }
  // The top-level keys are the tables.
  for (const ConfigTableKeys& t : config_keys()) {
    if (!t.table.empty()) continue;
    for (std::string_view k : t.keys) {
      bool found = false;
      for (const std::string& table : tables)
        found = found || table == k || table.rfind(std::string(k) + ".", 0) == 0;
      EXPECT_TRUE(found) << "top-level key " << k << " has no table section in sockrelay.toml(5)";
    }
  }
}

TEST(ManPages, EveryExampleInSockrelayToml5IsAValidConfig) {
  const auto page = read_lines(man_dir() / "sockrelay.toml.5.scd");
  std::vector<std::string> examples;
  std::string current;
  bool inside = false;
  for (const std::string& line : page) {
    if (line == "```") {
      if (inside) examples.push_back(current);
      inside = !inside;
      current.clear();
    } else if (inside) {
      current += line + "\n";
    }
  }
  ASSERT_GE(examples.size(), 6u) << "sockrelay.toml(5) has too few examples";
  for (const std::string& text : examples) {
    ParseOutcome o = parse_config(text, "sockrelay.toml(5) example");
    std::string diags;
    for (const Diagnostic& d : o.diagnostics) diags += "  " + d.format() + "\n";
    EXPECT_TRUE(o.diagnostics.empty()) << text << diags;
  }
}

}  // namespace
}  // namespace sockrelay
