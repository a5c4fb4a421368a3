#include "control/control_request.h"

#include "common/quote.h"

namespace sockrelay {

namespace {

std::string_view without_line_end(std::string_view line) {
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.remove_suffix(1);
  return line;
}

}  // namespace

RequestFraming frame_request(std::string& buffer, std::string_view bytes, size_t max_bytes) {
  size_t searched = buffer.size();
  buffer.append(bytes);
  size_t newline = buffer.find('\n', searched);
  if (newline != std::string::npos) {
    buffer.resize(newline);
    return RequestFraming::Line;
  }
  return buffer.size() > max_bytes ? RequestFraming::TooLong : RequestFraming::NeedMore;
}

ControlRequest parse_control_request(std::string_view line) {
  line = without_line_end(line);
  if (line == "status") return ControlRequest::Status;
  if (line == "status json") return ControlRequest::StatusJson;
  if (line == "status prometheus") return ControlRequest::StatusPrometheus;
  return ControlRequest::Unknown;
}

std::string unknown_request_reply(std::string_view line) {
  return "error: unknown request " + quoted(without_line_end(line)) +
         "; known: status, status json, status prometheus\n";
}

}  // namespace sockrelay
