// Ctrl-C and SIGTERM as a flag: the signal handler only records the signal (async-signal-safe);
// long loops call throw_if_interrupted() at safe points, so the exception unwinds the stack and the
// destructors remove temporary directories and files before tools/main.cpp exits with 128 + signal.
#pragma once

namespace resq {

// Installs the SIGINT and SIGTERM handlers (once per process; later calls do nothing). The first
// signal sets the flag; the handlers reset themselves, so a second Ctrl-C kills the process at once
// (what it leaves behind is then removed by the next run, see StagingDirectory).
void install_interrupt_handlers();

// The signal number received (SIGINT, SIGTERM), or 0.
int interrupt_signal();

// Throws InterruptedError ("interrupted by SIGINT") once a signal has been received.
void throw_if_interrupted();

// Forgets a received signal and re-installs the handlers (tests).
void reset_interrupt_for_testing();

}  // namespace resq
