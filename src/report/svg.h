// Inline SVG charts for the HTML report (no script, no external resource): line charts of spectra,
// a heatmap of per-layer errors and horizontal bars, each a self-contained <svg> element.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace resq::report {

// Text for HTML/SVG content and attribute values (& < > " ').
std::string html_escape(const std::string& text);
// A number for display: fixed or scientific as fits, `digits` significant digits.
std::string format_number(double value, int digits = 4);
// A colour on a perceptual dark-blue -> yellow ramp, t in [0, 1] (clamped), as "#rrggbb".
std::string ramp_color(double t);
// The i-th of a fixed palette of distinguishable colours.
std::string palette_color(size_t i);

struct Series {
  std::string label;
  std::vector<double> y;  // plotted at x = 1 .. y.size()
  std::string color;
};

struct LineChartOptions {
  std::string title;
  std::string x_label;
  std::string y_label;
  bool log_y = false;            // log10 axis (values <= 0 are drawn at the bottom)
  std::optional<double> y_max;   // fixed top of the axis (e.g. 1 for fractions)
  std::optional<double> y_min;
  std::optional<double> marker_x;  // a dashed vertical line (e.g. the 8-bit rank boundary)
  std::string marker_label;
  std::string css_class;         // class of the <svg>
  std::string data_attributes;   // extra attributes of the <svg>, e.g. data-subspace="U_A"
  bool legend = true;
  int width = 540;
  int height = 260;
};

// Each series as a <polyline> with one point per value (class "series", data-label).
std::string line_chart(const std::vector<Series>& series, const LineChartOptions& options);

struct HeatmapOptions {
  std::string title;
  std::string css_class;
  std::string value_label;  // legend caption
  int cell_width = 64;
  int cell_height = 18;
};

// values[row][col] as <rect class="cell" data-row data-col data-value> coloured on ramp_color from
// the matrix's min to max, the value written in each cell; NaN cells are grey ("n/a").
std::string heatmap(const std::vector<std::string>& row_labels, const std::vector<std::string>& col_labels,
                    const std::vector<std::vector<double>>& values, const HeatmapOptions& options);

struct Bar {
  std::string label;
  double value = 0.0;
  std::string text;   // written after the bar (e.g. "4.50 bits")
  std::string color;  // empty: the palette's first
};

// Horizontal bars (<rect class="bar" data-label data-value>) scaled to max(value, scale_max).
std::string bar_chart(const std::vector<Bar>& bars, const std::string& title, const std::string& css_class,
                      double scale_max = 0.0, int width = 560);

}  // namespace resq::report
