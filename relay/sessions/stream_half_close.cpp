// The stream route's half-close rule (stream_route.h says it in full): a
// FIN one side sent is passed on to the other only once every byte before
// it has been delivered there, so a shutdown never cuts the stream. On the
// kernel path, tcp's byte counts tell; while a session waits, a fast timer
// looks again.
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "sessions/stream_session.h"

namespace sockrelay {

namespace {

constexpr auto kHalfCloseCheck = std::chrono::milliseconds(5);

}  // namespace

void StreamRoute::check_half_close(Session& s) {
  if (s.connecting) return;
  bool waiting = false;
  for (Side* from : {&s.client, &s.upstream}) {
    Side& to = s.other(*from);
    if (to.shut_wr || !from->eof) continue;
    if (to.hup) {
      to.shut_wr = true;  // its peer is gone: there is no one to tell
      continue;
    }
    bool flushed = s.kernel ? s.attached && direction_flushed(s, *from, to) : !to.user_pending();
    if (!flushed) {
      waiting = true;
      continue;
    }
    // ENOTCONN: the peer is gone already; the session ends either way.
    if (shutdown(to.fd.get(), SHUT_WR) != 0 && errno != ENOTCONN)
      spdlog::debug("route {}: session {}: shutdown {}: {}", spec_.route_id, s.id, to.name,
                    std::strerror(errno));
    to.shut_wr = true;
    ++counters_.half_closes;
    spdlog::debug("route {}: session {}: EOF from {} propagated to {}", spec_.route_id, s.id, from->name,
                  to.name);
  }
  if (s.done()) {
    ++counters_.sessions_closed;
    close_session(s.id, nullptr);
    return;
  }
  if (waiting && s.kernel) arm_timer(true);
}

// Kernel path (tcp <-> tcp): whether every byte `from` received has been
// redirected and has left `to`'s psock backlog into `to`'s send path, by
// the rule in stream_route.h. Both counts are exact.
bool StreamRoute::direction_flushed(Session& s, Side& from, Side& to) {
  uint64_t redirected = maps_->flow_bytes(from.cookie);
  // tcpi_bytes_received counts the FIN as one byte (measured), and `from`
  // has seen the FIN when this is asked.
  if (to.in_pipe > 0) return false;
  uint64_t received = tcp_bytes_received(from.fd.get());
  if (received == 0 || received - 1 != redirected + from.user_in) {
    if (received != 0 && received - 1 < redirected + from.user_in && !to.warned_mismatch) {
      to.warned_mismatch = true;
      spdlog::warn("route {}: session {}: {} received {} bytes but {} were forwarded", spec_.route_id, s.id,
                   from.name, received - 1, redirected + from.user_in);
    }
    return false;
  }
  return tcp_bytes_written(to.fd.get()) - to.baseline >= redirected + to.user_out;
}

void StreamRoute::arm_timer(bool on) {
  if (on == timer_armed_) return;
  itimerspec spec{};
  if (on) {
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(kHalfCloseCheck).count();
    spec.it_interval.tv_nsec = ns;
    spec.it_value.tv_nsec = ns;
  }
  if (timerfd_settime(timer_.get(), 0, &spec, nullptr) != 0) {
    // Cannot fail for a valid timerfd and a time under a second; were it
    // to, the sessions waiting here are looked at on their next event or
    // expire as idle.
    spdlog::warn("route {}: half-close timer: {}", spec_.route_id, std::strerror(errno));
    return;
  }
  timer_armed_ = on;
}

void StreamRoute::on_timer() {
  uint64_t expirations;
  // Read until EAGAIN: the count does not matter, an unread one would wake
  // the loop again at once.
  while (read(timer_.get(), &expirations, sizeof(expirations)) > 0) {
  }
  std::vector<uint64_t> waiting;
  for (auto& [id, s] : sessions_)
    if (s->kernel && ((s->client.eof && !s->upstream.shut_wr) || (s->upstream.eof && !s->client.shut_wr)))
      waiting.push_back(id);
  bool any = false;
  for (uint64_t id : waiting) {
    auto it = sessions_.find(id);
    if (it == sessions_.end()) continue;
    check_half_close(*it->second);
    auto again = sessions_.find(id);
    if (again != sessions_.end() && !again->second->done()) any = true;
  }
  arm_timer(any);
}

}  // namespace sockrelay
