// LD_PRELOAD shim for units/test/caps.sh: when the relay tells systemd
// READY=1 (every endpoint and route is up), drop the calling thread's
// capabilities to SOCKRELAY_TEST_KEEP_CAPS (comma-separated numbers, may be
// empty) in the effective, permitted and inheritable sets, and clear the
// ambient set. What the relay does after that runs with only those: this is
// how caps.sh measures what the running relay still needs after set-up,
// without changing the daemon. The relay's event loop is single-threaded, so
// the main thread's set is the process's.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <linux/capability.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static void drop_caps(void) {
  const char* keep = getenv("SOCKRELAY_TEST_KEEP_CAPS");
  if (!keep) return;
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof(data));
  char* copy = strdup(keep);
  for (char* tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
    int cap = atoi(tok);
    data[cap / 32].effective |= 1u << (cap % 32);
    data[cap / 32].permitted |= 1u << (cap % 32);
  }
  free(copy);
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  if (syscall(SYS_capset, &hdr, data) != 0) {
    perror("drop_caps_at_ready: capset");
    _exit(99);
  }
  fprintf(stderr, "drop_caps_at_ready: capabilities now {%s}\n", keep);
}

static void maybe_drop(const char* state) {
  static int dropped;
  if (!dropped && state && strstr(state, "READY=1")) {
    dropped = 1;
    drop_caps();
  }
}

int sd_notify(int unset_environment, const char* state) {
  int (*real)(int, const char*) = (int (*)(int, const char*))dlsym(RTLD_NEXT, "sd_notify");
  int r = real ? real(unset_environment, state) : 0;
  maybe_drop(state);
  return r;
}

int sd_notifyf(int unset_environment, const char* format, ...) {
  char* state = NULL;
  va_list ap;
  va_start(ap, format);
  int n = vasprintf(&state, format, ap);
  va_end(ap);
  if (n < 0) return -12;  // -ENOMEM, as libsystemd
  int r = sd_notify(unset_environment, state);
  free(state);
  return r;
}
