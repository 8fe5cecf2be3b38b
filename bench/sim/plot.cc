#include "bench/sim/plot.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace matchd::sim {
namespace {

constexpr double kWidth = 820, kHeight = 560;
constexpr double kLeft = 80, kRight = 190, kTop = 50, kBottom = 60;
constexpr const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                   "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

std::string RenderSvg(const std::vector<Series>& series, const PlotOptions& options) {
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = 0;
  double y_lo = std::numeric_limits<double>::infinity(), y_hi = 0;
  for (const Series& s : series) {
    for (auto [x, y] : s.points) {
      if (x <= 0 || y <= 0) continue;
      x_lo = std::min(x_lo, x), x_hi = std::max(x_hi, x);
      y_lo = std::min(y_lo, y), y_hi = std::max(y_hi, y);
    }
  }
  if (x_hi == 0) x_lo = 1, x_hi = 10, y_lo = 1, y_hi = 10;
  // Whole decades around the data.
  const double lx0 = std::floor(std::log10(x_lo)), lx1 = std::max(lx0 + 1, std::ceil(std::log10(x_hi)));
  const double ly0 = std::floor(std::log10(y_lo)), ly1 = std::max(ly0 + 1, std::ceil(std::log10(y_hi)));
  const double pw = kWidth - kLeft - kRight, ph = kHeight - kTop - kBottom;
  auto px = [&](double x) { return kLeft + (std::log10(x) - lx0) / (lx1 - lx0) * pw; };
  auto py = [&](double y) { return kTop + ph - (std::log10(y) - ly0) / (ly1 - ly0) * ph; };

  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%.0f\" y=\"25\" font-size=\"15\">%s</text>\n",
      kWidth, kHeight, kLeft, Escape(options.title));
  // Grid: decades and 2x/5x ticks.
  for (double d = lx0; d <= lx1; ++d) {
    for (double m : {1.0, 2.0, 5.0}) {
      const double x = m * std::pow(10.0, d);
      if (std::log10(x) > lx1 + 1e-9) break;
      absl::StrAppendFormat(&svg,
                            "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n"
                            "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n",
                            px(x), kTop, px(x), kTop + ph, m == 1 ? "#bbb" : "#eee", px(x),
                            kTop + ph + 16, x);
    }
  }
  for (double d = ly0; d <= ly1; ++d) {
    for (double m : {1.0, 2.0, 5.0}) {
      const double y = m * std::pow(10.0, d);
      if (std::log10(y) > ly1 + 1e-9) break;
      absl::StrAppendFormat(&svg,
                            "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n"
                            "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                            kLeft, py(y), kLeft + pw, py(y), m == 1 ? "#bbb" : "#eee", kLeft - 6,
                            py(y) + 4, y);
    }
  }
  absl::StrAppendFormat(&svg,
                        "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                        "stroke=\"#444\"/>\n"
                        "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n"
                        "<text transform=\"translate(20 %.1f) rotate(-90)\" "
                        "text-anchor=\"middle\">%s</text>\n",
                        kLeft, kTop, pw, ph, kLeft + pw / 2, kHeight - 18,
                        Escape(options.x_label), kTop + ph / 2, Escape(options.y_label));
  // Clip everything drawn inside the plot area.
  absl::StrAppendFormat(&svg,
                        "<clipPath id=\"area\"><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
                        "height=\"%.1f\"/></clipPath>\n<g clip-path=\"url(#area)\">\n",
                        kLeft, kTop, pw, ph);
  for (double c : options.reference_products) {
    const double xa = std::pow(10.0, lx0), xb = std::pow(10.0, lx1);
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#999\" "
                          "stroke-dasharray=\"4 4\"/>\n",
                          px(xa), py(c / xa), px(xb), py(c / xb));
  }
  for (size_t i = 0; i < series.size(); ++i) {
    const char* color = kColors[i % (sizeof(kColors) / sizeof(kColors[0]))];
    std::string path;
    for (auto [x, y] : series[i].points) {
      if (x <= 0 || y <= 0) continue;
      absl::StrAppendFormat(&path, "%s%.1f,%.1f", path.empty() ? "" : " ", px(x), py(y));
      absl::StrAppendFormat(&svg, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px(x),
                            py(y), color);
    }
    absl::StrAppendFormat(&svg, "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\" "
                          "stroke-width=\"2\"/>\n", path, color);
  }
  svg += "</g>\n";
  // Legend.
  double ly = kTop + 10;
  for (size_t i = 0; i < series.size(); ++i, ly += 20) {
    const char* color = kColors[i % (sizeof(kColors) / sizeof(kColors[0]))];
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                          "stroke-width=\"3\"/><text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                          kLeft + pw + 15, ly, kLeft + pw + 40, ly, color, kLeft + pw + 46, ly + 4,
                          Escape(series[i].name));
  }
  if (!options.reference_products.empty()) {
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#999\" "
                          "stroke-dasharray=\"4 4\"/><text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                          kLeft + pw + 15, ly, kLeft + pw + 40, ly, kLeft + pw + 46, ly + 4,
                          Escape(options.reference_label));
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace matchd::sim
