// resq command-line entry point: dispatches to one subcommand per tools/cmd_*.cpp and is the only
// place that turns exceptions into log messages and exit codes (docs/RELIABILITY.md): 0 ok, 1 error
// (bad input, I/O, non-finite results), 2 usage error (any flag or argument problem, CLI11's own
// included), 128 + signal when interrupted by SIGINT (130) or SIGTERM (143).
#include <malloc.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <new>

#include "common.h"
#include "resq/common/error.h"
#include "resq/common/interrupt.h"
#include "resq/common/log.h"

int main(int argc, char** argv) {
  // OpenMP threads (ours, libtorch's, OpenBLAS's: all libgomp) spin at barriers by default. With
  // several parallel libraries alternating, and on shared machines, the spinning threads steal the
  // cores the working ones need: measured 466 vs 3,463 tokens/s for the packed runtime on a loaded
  // 2-core VM. libgomp reads OMP_WAIT_POLICY once when it is loaded (before main), so when the user
  // has not chosen a policy, re-execute once with PASSIVE. Setting it yourself skips the re-exec.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: then run with the default policy
  }
  // Keep large freed blocks in the heap: forward passes allocate and free the same multi-MiB
  // activations every layer, and returning them to the kernel each time costs page faults.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  CLI::App app{"resq: ResQ mixed 4/8-bit post-training quantization of LLMs"};
  app.require_subcommand(1);
  app.set_version_flag("--version,-V", [] { return resq::tools::version_text(); });
  resq::tools::register_eval(app);
  resq::tools::register_tokenize(app);
  resq::tools::register_make_model(app);
  resq::tools::register_quantize(app);
  resq::tools::register_bench(app);
  resq::tools::register_inspect(app);
  resq::tools::register_generate(app);
  resq::tools::register_demo(app);
  resq::tools::register_report(app);
  resq::tools::register_export(app);

  // Ctrl-C / SIGTERM set a flag that the long loops check; the exception unwinds and removes
  // temporary files (a second signal kills at once).
  resq::install_interrupt_handlers();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help / --version are "errors" with exit code 0; every other parse or validation error
    // (unknown flag, missing argument, bad number: CLI11's 104/106/109...) is a usage error.
    const int rc = app.exit(e);  // prints CLI11's message (stdout for help, stderr for errors)
    return rc == 0 ? 0 : 2;
  } catch (const resq::UsageError& e) {
    resq::log::error(e.what());
    return 2;
  } catch (const resq::InterruptedError& e) {
    resq::log::error(e.what());
    return 128 + e.signal_number();
  } catch (const resq::Error& e) {
    resq::log::error(e.what());
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    // Library code turns these into IoErrors; this names the paths should one escape.
    std::string paths = e.path1().string();
    if (!e.path2().empty()) paths += ", " + e.path2().string();
    resq::log::error(paths + ": " + e.code().message());
    return 1;
  } catch (const std::bad_alloc&) {
    resq::log::error("out of memory");
    return 1;
  } catch (const std::exception& e) {
    resq::log::error(std::string("internal error: ") + e.what());
    return 1;
  }
  return 0;
}
