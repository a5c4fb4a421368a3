#include "daemon/notify.h"

#include <systemd/sd-daemon.h>
#include <time.h>

namespace sockrelay {

ServiceNotifier::ServiceNotifier() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0) watchdog_period_ = std::chrono::milliseconds(usec / 2000);
}

void ServiceNotifier::ready(const std::string& status) {
  last_status_ = status;
  sd_notifyf(0, "READY=1\nSTATUS=%s", status.c_str());
}

void ServiceNotifier::reloading() {
  // Type=notify-reload wants MONOTONIC_USEC with RELOADING=1 (systemd 253+);
  // older systemd ignores it.
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t usec = static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading", static_cast<unsigned long long>(usec));
  last_status_ = "reloading";
}

void ServiceNotifier::stopping() { sd_notify(0, "STOPPING=1\nSTATUS=stopping"); }

void ServiceNotifier::status(const std::string& status) {
  if (status == last_status_) return;
  last_status_ = status;
  sd_notifyf(0, "STATUS=%s", status.c_str());
}

void ServiceNotifier::watchdog_tick() {
  if (watchdog_period_.count() == 0) return;
  auto now = std::chrono::steady_clock::now();
  if (now - last_ping_ < watchdog_period_) return;
  last_ping_ = now;
  sd_notify(0, "WATCHDOG=1");
}

}  // namespace sockrelay
