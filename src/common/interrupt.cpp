// The SIGINT / SIGTERM flag of common/interrupt.h: a handler that only stores the signal number.
#include "resq/common/interrupt.h"

#include <csignal>
#include <cstring>
#include <string>

#include "resq/common/error.h"

namespace resq {
namespace {

volatile std::sig_atomic_t g_signal = 0;

extern "C" void record_signal(int signo) { g_signal = signo; }

void install() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = record_signal;
  sigemptyset(&sa.sa_mask);
  // SA_RESETHAND: the second signal takes the default action (terminate) for a run that is stuck in
  // a computation without a safe point. SA_RESTART: system calls in progress (ours, libtorch's,
  // OpenMP's) continue instead of failing with EINTR; the flag is read at the next safe point.
  sa.sa_flags = SA_RESETHAND | SA_RESTART;
  for (int signo : {SIGINT, SIGTERM}) {
    // A signal the parent set to be ignored stays ignored (a shell's background job ignores SIGINT).
    struct sigaction old;
    if (sigaction(signo, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    sigaction(signo, &sa, nullptr);
  }
}

bool g_installed = false;

}  // namespace

void install_interrupt_handlers() {
  if (g_installed) return;
  g_installed = true;
  install();
}

int interrupt_signal() { return static_cast<int>(g_signal); }

void throw_if_interrupted() {
  const int signo = interrupt_signal();
  if (signo == 0) return;
  const std::string name = signo == SIGINT ? "SIGINT" : signo == SIGTERM ? "SIGTERM" : "signal " + std::to_string(signo);
  throw InterruptedError("interrupted by " + name + "; temporary files removed", signo);
}

void reset_interrupt_for_testing() {
  g_signal = 0;
  g_installed = true;
  install();
}

}  // namespace resq
