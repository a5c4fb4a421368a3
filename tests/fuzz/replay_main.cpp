// Runs a fuzz target's LLVMFuzzerTestOneInput once per file, for ctest
// (tests/fuzz/CMakeLists.txt): the seed corpus and every crash ever found
// stay regression cases in every build, gcc or clang, with or without ASan.
// Arguments: files or directories (every regular file in them).
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

int replay(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", file.c_str());
    return 1;
  }
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int files = 0, errors = 0;
  for (int i = 1; i < argc; ++i) {
    std::filesystem::path arg(argv[i]);
    if (std::filesystem::is_directory(arg)) {
      for (const auto& entry : std::filesystem::directory_iterator(arg)) {
        if (!entry.is_regular_file()) continue;
        errors += replay(entry.path());
        ++files;
      }
    } else {
      errors += replay(arg);
      ++files;
    }
  }
  std::printf("%d input(s) replayed, %d unreadable\n", files, errors);
  return errors == 0 && files > 0 ? 0 : 1;
}
