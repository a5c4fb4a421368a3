// The control protocol's request side, apart from any socket: cutting one
// request line out of the bytes a client sends, and naming the request.
// ControlServer uses both; tests/fuzz/control_request_fuzz.cpp feeds them
// arbitrary bytes in arbitrary pieces.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace sockrelay {

enum class RequestFraming {
  NeedMore,  // no newline yet, and still within the limit
  Line,      // `buffer` is now the request line, without its newline
  TooLong,   // no newline within `max_bytes`
};

// Appends `bytes` to `buffer` (what the client sent so far) and says
// whether a whole line is there.
RequestFraming frame_request(std::string& buffer, std::string_view bytes, size_t max_bytes);

enum class ControlRequest { Status, StatusJson, StatusPrometheus, Unknown };

// A request line (trailing "\r" ignored): "status", "status json" or
// "status prometheus".
ControlRequest parse_control_request(std::string_view line);

// The reply to an Unknown request: `error: unknown request "..."; known: ...`.
std::string unknown_request_reply(std::string_view line);

}  // namespace sockrelay
