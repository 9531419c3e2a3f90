// Inline SVG charts of the HTML report (src/report/svg.h): plain strings, fixed layouts, no script.
#include "svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "resq/common/log.h"

namespace resq::report {
namespace {

// Plot area inside a chart: margins for the title, axis labels and tick labels.
constexpr int kLeft = 64, kRight = 16, kTop = 28, kBottom = 44;

std::string fmt(double v) { return strprintf("%.2f", v); }

// "Nice" tick values covering [lo, hi] (about `count` of them).
std::vector<double> ticks(double lo, double hi, int count) {
  std::vector<double> out;
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / count;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  }
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  return out;
}

std::string text_element(double x, double y, const std::string& text, const std::string& anchor, const std::string& extra = "") {
  return "<text x=\"" + fmt(x) + "\" y=\"" + fmt(y) + "\" text-anchor=\"" + anchor + "\"" + extra + ">" + html_escape(text) + "</text>";
}

}  // namespace

std::string html_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string format_number(double v, int digits) {
  if (std::isnan(v)) return "n/a";
  const double a = std::abs(v);
  if (a != 0.0 && (a < 1e-3 || a >= 1e6)) return strprintf("%.*e", std::max(0, digits - 1), v);
  return strprintf("%.*g", digits, v);
}

std::string ramp_color(double t) {
  if (!(t >= 0.0)) t = 0.0;
  t = std::min(t, 1.0);
  // Piecewise-linear through viridis-like stops: readable on white, monotone in lightness.
  static const double stops[][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  const double pos = t * 4.0;
  const int i = std::min(3, static_cast<int>(pos));
  const double f = pos - i;
  int rgb[3];
  for (int k = 0; k < 3; ++k) rgb[k] = static_cast<int>(std::lround(stops[i][k] + f * (stops[i + 1][k] - stops[i][k])));
  return strprintf("#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
}

std::string palette_color(size_t i) {
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                 "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};
  return colors[i % (sizeof(colors) / sizeof(colors[0]))];
}

std::string line_chart(const std::vector<Series>& series, const LineChartOptions& o) {
  size_t n = 1;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const Series& s : series) {
    n = std::max(n, s.y.size());
    for (double v : s.y) {
      if (!std::isfinite(v) || (o.log_y && v <= 0)) continue;
      const double t = o.log_y ? std::log10(v) : v;
      lo = std::min(lo, t);
      hi = std::max(hi, t);
    }
  }
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  if (o.y_min) lo = o.log_y ? std::log10(*o.y_min) : *o.y_min;
  if (o.y_max) hi = o.log_y ? std::log10(*o.y_max) : *o.y_max;
  if (o.log_y) lo = std::max(lo, hi - 8.0);  // at most 8 decades
  if (!(hi > lo)) hi = lo + 1.0;
  const double pw = o.width - kLeft - kRight, ph = o.height - kTop - kBottom;
  auto px = [&](double x) { return kLeft + (n > 1 ? (x - 1) / static_cast<double>(n - 1) : 0.5) * pw; };
  auto py = [&](double v) {
    double t = o.log_y ? (v > 0 ? std::log10(v) : lo) : v;
    t = std::clamp(t, lo, hi);
    return kTop + (1.0 - (t - lo) / (hi - lo)) * ph;
  };
  std::string s = "<svg class=\"chart " + o.css_class + "\" " + o.data_attributes + " width=\"" + std::to_string(o.width) +
                  "\" height=\"" + std::to_string(o.height) + "\" viewBox=\"0 0 " + std::to_string(o.width) + " " +
                  std::to_string(o.height) + "\" role=\"img\">";
  s += "<title>" + html_escape(o.title) + "</title>";
  s += "<rect class=\"frame\" x=\"" + fmt(kLeft) + "\" y=\"" + fmt(kTop) + "\" width=\"" + fmt(pw) + "\" height=\"" + fmt(ph) +
       "\" fill=\"#fafafa\" stroke=\"#999\"/>";
  s += text_element(o.width / 2.0, 18, o.title, "middle", " font-weight=\"bold\"");
  // y ticks: decades on a log axis.
  std::vector<double> yt;
  if (o.log_y) {
    for (double d = std::ceil(lo); d <= hi + 1e-9; d += std::max(1.0, std::floor((hi - lo) / 5))) yt.push_back(d);
  } else {
    yt = ticks(lo, hi, 5);
  }
  for (double t : yt) {
    const double v = o.log_y ? std::pow(10.0, t) : t;
    const double y = py(v);
    s += "<line x1=\"" + fmt(kLeft) + "\" x2=\"" + fmt(kLeft + pw) + "\" y1=\"" + fmt(y) + "\" y2=\"" + fmt(y) +
         "\" stroke=\"#e0e0e0\"/>";
    s += text_element(kLeft - 4, y + 4, o.log_y ? "1e" + strprintf("%.0f", t) : format_number(v, 3), "end");
  }
  for (double t : ticks(1, static_cast<double>(n), 6)) {
    s += text_element(px(t), kTop + ph + 16, format_number(t, 6), "middle");
  }
  s += text_element(kLeft + pw / 2, o.height - 6, o.x_label, "middle");
  s += text_element(14, kTop + ph / 2, o.y_label, "middle",
                    " transform=\"rotate(-90 14 " + fmt(kTop + ph / 2) + ")\"");
  if (o.marker_x) {
    const double x = px(*o.marker_x);
    s += "<line class=\"marker\" x1=\"" + fmt(x) + "\" x2=\"" + fmt(x) + "\" y1=\"" + fmt(kTop) + "\" y2=\"" + fmt(kTop + ph) +
         "\" stroke=\"#444\" stroke-dasharray=\"4 3\"/>";
    s += text_element(x + 4, kTop + 14, o.marker_label, "start", " font-size=\"11\"");
  }
  for (size_t i = 0; i < series.size(); ++i) {
    const Series& se = series[i];
    std::string pts;
    for (size_t k = 0; k < se.y.size(); ++k) {
      if (!pts.empty()) pts += ' ';
      pts += fmt(px(static_cast<double>(k + 1))) + "," + fmt(py(se.y[k]));
    }
    const std::string color = se.color.empty() ? palette_color(i) : se.color;
    s += "<polyline class=\"series\" data-label=\"" + html_escape(se.label) + "\" data-points=\"" +
         std::to_string(se.y.size()) + "\" fill=\"none\" stroke=\"" + color + "\" stroke-width=\"1.5\" points=\"" + pts +
         "\"><title>" + html_escape(se.label) + "</title></polyline>";
  }
  if (o.legend && series.size() > 1 && series.size() <= 10) {
    for (size_t i = 0; i < series.size(); ++i) {
      const double y = kTop + 12 + 14.0 * i;
      const std::string color = series[i].color.empty() ? palette_color(i) : series[i].color;
      s += "<rect x=\"" + fmt(kLeft + pw - 120) + "\" y=\"" + fmt(y - 8) + "\" width=\"10\" height=\"3\" fill=\"" + color + "\"/>";
      s += text_element(kLeft + pw - 106, y - 4, series[i].label, "start", " font-size=\"10\"");
    }
  }
  return s + "</svg>";
}

std::string heatmap(const std::vector<std::string>& rows, const std::vector<std::string>& cols,
                    const std::vector<std::vector<double>>& values, const HeatmapOptions& o) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const auto& r : values) {
    for (double v : r) {
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    }
  }
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  const int left = 80, top = 44;
  const int width = left + o.cell_width * static_cast<int>(cols.size()) + 16;
  const int height = top + o.cell_height * static_cast<int>(rows.size()) + 34;
  std::string s = "<svg class=\"chart heatmap " + o.css_class + "\" width=\"" + std::to_string(width) + "\" height=\"" +
                  std::to_string(height) + "\" viewBox=\"0 0 " + std::to_string(width) + " " + std::to_string(height) +
                  "\" role=\"img\"><title>" + html_escape(o.title) + "</title>";
  s += text_element(width / 2.0, 16, o.title, "middle", " font-weight=\"bold\"");
  for (size_t c = 0; c < cols.size(); ++c) {
    s += text_element(left + o.cell_width * (c + 0.5), top - 8, cols[c], "middle", " font-size=\"11\"");
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    const double y = top + static_cast<double>(o.cell_height) * r;
    s += text_element(left - 6, y + o.cell_height - 5, rows[r], "end", " font-size=\"11\"");
    for (size_t c = 0; c < cols.size(); ++c) {
      const double v = c < values[r].size() ? values[r][c] : std::nan("");
      const bool ok = std::isfinite(v);
      const double t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
      const std::string fill = ok ? ramp_color(t) : "#cccccc";
      const double x = left + static_cast<double>(o.cell_width) * c;
      s += "<rect class=\"cell\" data-row=\"" + std::to_string(r) + "\" data-col=\"" + std::to_string(c) + "\" data-value=\"" +
           (ok ? strprintf("%.6g", v) : std::string("nan")) + "\" x=\"" + fmt(x) + "\" y=\"" + fmt(y) + "\" width=\"" +
           std::to_string(o.cell_width - 1) + "\" height=\"" + std::to_string(o.cell_height - 1) + "\" fill=\"" + fill +
           "\"><title>" + html_escape(rows[r] + " " + cols[c] + ": " + format_number(v)) + "</title></rect>";
      s += text_element(x + o.cell_width / 2.0, y + o.cell_height - 5, format_number(v, 3), "middle",
                        std::string(" font-size=\"10\" fill=\"") + (ok && t > 0.6 ? "#000" : "#fff") + "\"");
    }
  }
  const double ly = top + static_cast<double>(o.cell_height) * rows.size() + 10;
  for (int i = 0; i < 20; ++i) {
    s += "<rect x=\"" + fmt(left + 8.0 * i) + "\" y=\"" + fmt(ly) + "\" width=\"8\" height=\"8\" fill=\"" + ramp_color(i / 19.0) + "\"/>";
  }
  s += text_element(left + 168, ly + 8, o.value_label + ": " + format_number(lo, 3) + " .. " + format_number(hi, 3), "start",
                    " font-size=\"11\"");
  return s + "</svg>";
}

std::string bar_chart(const std::vector<Bar>& bars, const std::string& title, const std::string& css_class, double scale_max,
                      int width) {
  double hi = scale_max;
  for (const Bar& b : bars) hi = std::max(hi, b.value);
  if (!(hi > 0)) hi = 1;
  const int left = 170, row = 20, top = 28;
  const int height = top + row * static_cast<int>(bars.size()) + 8;
  const double pw = width - left - 150;
  std::string s = "<svg class=\"chart bars " + css_class + "\" width=\"" + std::to_string(width) + "\" height=\"" +
                  std::to_string(height) + "\" viewBox=\"0 0 " + std::to_string(width) + " " + std::to_string(height) +
                  "\" role=\"img\"><title>" + html_escape(title) + "</title>";
  s += text_element(width / 2.0, 18, title, "middle", " font-weight=\"bold\"");
  for (size_t i = 0; i < bars.size(); ++i) {
    const Bar& b = bars[i];
    const double y = top + static_cast<double>(row) * i;
    const double w = std::max(0.0, b.value) / hi * pw;
    s += text_element(left - 6, y + 13, b.label, "end", " font-size=\"11\"");
    s += "<rect class=\"bar\" data-label=\"" + html_escape(b.label) + "\" data-value=\"" + strprintf("%.6g", b.value) +
         "\" x=\"" + fmt(left) + "\" y=\"" + fmt(y + 2) + "\" width=\"" + fmt(w) + "\" height=\"" + std::to_string(row - 5) +
         "\" fill=\"" + (b.color.empty() ? palette_color(0) : b.color) + "\"/>";
    s += text_element(left + w + 6, y + 13, b.text, "start", " font-size=\"11\"");
  }
  return s + "</svg>";
}

}  // namespace resq::report
