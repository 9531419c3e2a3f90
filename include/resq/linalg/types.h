// Matrix types shared by the resq linear-algebra area (float64, row-major like W[out, in]).
#pragma once

#include <Eigen/Core>

namespace resq {

// Row-major dense float64 matrix; row-major matches how resq stores weights W[out, in].
using MatrixXdR = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

}  // namespace resq
