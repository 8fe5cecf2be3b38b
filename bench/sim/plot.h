// A small SVG line chart for matchsim's sweep: one polyline per algorithm on
// log-log axes (wait × quality = K / λ is then a straight line, drawn for
// reference).
#ifndef MATCHD_BENCH_SIM_PLOT_H_
#define MATCHD_BENCH_SIM_PLOT_H_

#include <string>
#include <vector>

namespace matchd::sim {

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y), both > 0
};

struct PlotOptions {
  std::string title;
  std::string x_label;
  std::string y_label;
  // Reference curves y = c / x, labelled with `reference_label` and c.
  std::vector<double> reference_products;
  std::string reference_label;
};

// The chart as a standalone SVG document. Points with x or y <= 0 are skipped.
std::string RenderSvg(const std::vector<Series>& series, const PlotOptions& options);

}  // namespace matchd::sim

#endif  // MATCHD_BENCH_SIM_PLOT_H_
