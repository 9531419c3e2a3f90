# Finds the system (Debian) packages resq builds on. Nothing is vendored: see third_party/README.md.
find_package(Torch REQUIRED)
find_package(Eigen3 3.3 REQUIRED NO_MODULE)
find_package(CLI11 REQUIRED)
find_package(nlohmann_json 3.9 REQUIRED)
# spdlog (and the {fmt} it brings) is linked PRIVATE to resq_common only: src/common/log.cpp is the one
# translation unit that includes it, so no torch target ever sees Debian's fmt headers (PyTorch's pip
# wheels ship a newer {fmt} of their own in torch/include).
find_package(spdlog REQUIRED)
# LAPACK (Fortran dsyevd_/dpotrf_/dtrtri_, declared in include/resq/linalg/lapack.h), not LAPACKE:
# a GPU image may carry its own LAPACKE built against a newer LAPACK than the one we would load.
find_package(LAPACK REQUIRED)
find_package(PkgConfig REQUIRED)

pkg_check_modules(RESQ_SENTENCEPIECE REQUIRED IMPORTED_TARGET GLOBAL sentencepiece)
add_library(resq::sentencepiece ALIAS PkgConfig::RESQ_SENTENCEPIECE)
pkg_check_modules(RESQ_PCRE2 REQUIRED IMPORTED_TARGET GLOBAL libpcre2-8)
add_library(resq::pcre2 ALIAS PkgConfig::RESQ_PCRE2)
pkg_check_modules(RESQ_UTF8PROC REQUIRED IMPORTED_TARGET GLOBAL libutf8proc)
add_library(resq::utf8proc ALIAS PkgConfig::RESQ_UTF8PROC)
