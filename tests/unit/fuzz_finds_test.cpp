// What tests/fuzz found, kept: the guard in front of toml++ 3.3.0's
// unreachable branch (config/toml_guard.h): the characters that would reach it
// are refused with their position where TOML forbids them anyway, and let
// through where they are plain text; and "did you mean" on long names.
#include <gtest/gtest.h>

#include "config/config.h"
#include "config/toml_guard.h"

namespace sockrelay {
namespace {

TEST(TomlGuard, NonAsciiOutsideStringsIsRefusedWithItsPosition) {
  auto outcome = parse_config("[relay]\nlog-level = \xc3\xa9\n", "x.toml");
  ASSERT_EQ(outcome.diagnostics.size(), 1u);
  EXPECT_EQ(
      outcome.diagnostics[0].format(),
      "x.toml:2:13: error: syntax error: character U+00E9 is only allowed inside a string or a comment");
  auto header = find_toml_hazard("[endpoints.\xd0\x99]\n");  // the fuzzer's first find: "Й" in a header
  ASSERT_TRUE(header);
  EXPECT_EQ(header->pos.line, 1);
  EXPECT_EQ(header->pos.column, 12);
}

TEST(TomlGuard, QuotedKeysAndBackslashesInMultiLineStrings) {
  EXPECT_TRUE(find_toml_hazard("[endpoints.\"caf\xc3\xa9\"]\n"));
  EXPECT_TRUE(find_toml_hazard("\"caf\xc3\xa9\" = 1\n"));
  EXPECT_TRUE(find_toml_hazard("a = \"\"\"x\\\xc3\xa9\"\"\"\n"));
  EXPECT_TRUE(find_toml_hazard("a = \"\"\"x\\\n   \xc3\xa9\"\"\"\n"));
  // A quote after a bare value does not open a string: toml++ reads on.
  EXPECT_TRUE(find_toml_hazard("a = 49\"\xc8\xa4\"\n"));
}

TEST(TomlGuard, NonAsciiInValuesAndCommentsIsFine) {
  EXPECT_FALSE(
      find_toml_hazard("# caf\xc3\xa9 \xd0\x99\n[endpoints.in]\nlisten = \"/run/caf\xc3\xa9.sock\"\n"));
  EXPECT_FALSE(find_toml_hazard("a = ['caf\xc3\xa9', \"\xd0\x99\"]\nb = '''\xc3\xa9'''\n"));
  EXPECT_FALSE(
      find_toml_hazard("a = \"\xe4\xb8\xad\"\n\xe4\xb8\xad"));  // U+4E2D: toml++ handles it (an error, no UB)
  auto outcome =
      parse_config("[endpoints.in]\ntype = \"unix-dgram\"\nlisten = \"/run/caf\xc3\xa9.sock\"\n", "x.toml");
  for (const auto& d : outcome.diagnostics)
    EXPECT_EQ(d.message.find("U+00E9"), std::string::npos) << d.format();
}

// A `to` of thousands of characters took over 10 s ("did you mean" built a
// table of the product of the lengths: config/checker.cpp edit_distance);
// now it is "far" at once, and a near name is still suggested.
TEST(ConfigFuzzFinds, LongUnknownNamesAreRefusedWithoutASuggestion) {
  const std::string endpoints =
      "[endpoints.web-in]\ntype = \"tcp\"\nlisten = \"127.0.0.1:8080\"\n"
      "[endpoints.web-backend]\ntype = \"tcp\"\nconnect = \"127.0.0.1:8081\"\n";
  auto far = parse_config(
      endpoints + "[[routes]]\nfrom = \"web-in\"\nto = \"" + std::string(8000, '_') + "\"\n", "x.toml");
  ASSERT_TRUE(far.has_errors());
  EXPECT_EQ(far.diagnostics[0].message.find("did you mean"), std::string::npos) << far.diagnostics[0].message;
  auto near = parse_config(endpoints + "[[routes]]\nfrom = \"web-in\"\nto = \"web-bakcend\"\n", "x.toml");
  ASSERT_TRUE(near.has_errors());
  EXPECT_NE(near.diagnostics[0].message.find("web-backend"), std::string::npos)
      << near.diagnostics[0].message;
}

}  // namespace
}  // namespace sockrelay
