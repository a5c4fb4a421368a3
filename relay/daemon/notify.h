// The systemd notify protocol (sd_notify(3)); every call is a no-op when
// the relay was not started by systemd with NOTIFY_SOCKET.
#pragma once

#include <chrono>
#include <string>

namespace sockrelay {

class ServiceNotifier {
 public:
  ServiceNotifier();

  void ready(const std::string& status);   // READY=1 + STATUS=
  void reloading();                        // RELOADING=1 + MONOTONIC_USEC=
  void stopping();                         // STOPPING=1
  void status(const std::string& status);  // STATUS=, only when it changed
  // WATCHDOG=1 when WatchdogSec= is set and half its period has passed.
  void watchdog_tick();

  // How often the loop must tick for the watchdog (zero when it is off).
  std::chrono::milliseconds watchdog_period() const { return watchdog_period_; }

 private:
  std::string last_status_;
  std::chrono::milliseconds watchdog_period_{0};
  std::chrono::steady_clock::time_point last_ping_{};
};

}  // namespace sockrelay
