// Fuzz target: endpoint address parsing (config/address.cpp) for every
// endpoint kind, listen and connect. Input: byte 0 picks the kind (low 3
// bits) and listen/connect (bit 3), the rest is the address text. An address
// that parses must print (format_address) as text that parses again to the
// same address.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <string_view>

#include "config/address.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sockrelay;
  if (size < 1) return 0;
  EndpointKind kind = kAllKinds[data[0] % std::size(kAllKinds)];
  bool for_listen = (data[0] & 8) != 0;
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  auto parsed = parse_address(kind, text, for_listen);
  if (!parsed) {
    if (parsed.error().describe().empty()) std::abort();
    return 0;
  }
  if (parsed->length == 0 || parsed->length > sizeof(parsed->storage)) std::abort();
  std::string printed = format_address(parsed->sa(), parsed->length);
  auto again = parse_address(kind, printed, for_listen);
  if (!again || !(*again == *parsed)) std::abort();
  return 0;
}
