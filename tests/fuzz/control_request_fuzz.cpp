// Fuzz target: the control socket's request side (control/control_request.h)
// as ControlServer drives it: bytes arrive in pieces (byte 0 sets the piece
// size), each piece is framed against the 256-byte limit, a whole line is
// parsed and, if unknown, answered with a one-line error.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "control/control_request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sockrelay;
  constexpr size_t kMax = 256;  // ControlLimits::max_request_bytes
  if (size < 1) return 0;
  size_t piece = std::max<size_t>(1, data[0] % 64);
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  std::string buffer;
  while (!rest.empty()) {
    // As read_request: never more than one byte over the limit at once.
    size_t room = kMax + 1 - buffer.size();
    std::string_view bytes = rest.substr(0, std::min(piece, room));
    rest.remove_prefix(bytes.size());
    RequestFraming framing = frame_request(buffer, bytes, kMax);
    if (framing == RequestFraming::TooLong) {
      if (buffer.size() <= kMax) std::abort();
      return 0;
    }
    if (framing == RequestFraming::Line) break;
  }
  if (buffer.find('\n') != std::string::npos || buffer.size() > kMax) std::abort();
  if (parse_control_request(buffer) == ControlRequest::Unknown) {
    std::string reply = unknown_request_reply(buffer);
    // One line, whatever the client sent.
    if (reply.rfind("error: ", 0) != 0 || reply.find('\n') != reply.size() - 1) std::abort();
  }
  return 0;
}
