// Tests of the interrupt flag (resq/common/interrupt.h): a delivered SIGINT / SIGTERM only sets the
// flag, and the next safe point throws InterruptedError carrying the signal.
#include "resq/common/interrupt.h"

#include <gtest/gtest.h>

#include <csignal>

#include "resq/common/error.h"

namespace resq {
namespace {

TEST(Interrupt, ASignalBecomesAnInterruptedErrorAtTheNextSafePoint) {
  reset_interrupt_for_testing();
  EXPECT_NO_THROW(throw_if_interrupted());
  std::raise(SIGINT);  // handled: the process keeps running
  EXPECT_EQ(interrupt_signal(), SIGINT);
  try {
    throw_if_interrupted();
    ADD_FAILURE() << "expected InterruptedError";
  } catch (const InterruptedError& e) {
    EXPECT_EQ(e.signal_number(), SIGINT);
    EXPECT_STREQ(e.what(), "interrupted by SIGINT; temporary files removed");
  }
  reset_interrupt_for_testing();
  std::raise(SIGTERM);
  EXPECT_EQ(interrupt_signal(), SIGTERM);
  reset_interrupt_for_testing();
  EXPECT_EQ(interrupt_signal(), 0);
}

}  // namespace
}  // namespace resq
