// `lstmserve-cli analyze`: short initializer names, result tables, and the variance plot.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include "lstmserve/v1/parameter_service.pb.h"

namespace lstmserve::client {

// "kaiming_normal", "kaiming_uniform[:A]", "xavier_uniform[:GAIN]", "xavier_normal[:GAIN]",
// "orthogonal[:GAIN]", "normal:STD", "uniform:A:B", "trunc_normal:STD", "constant:V",
// "zeros", "ones", "eye", "dirac[:GROUPS]", "sparse:SPARSITY[:STD]", or an Initializer as
// JSON ("{...}"). INVALID_ARGUMENT otherwise.
absl::StatusOr<v1::Initializer> ParseInitializer(const std::string& text);

// The per-layer table of one analysis, readable.
std::string AnalysisTable(const std::string& title, const v1::AnalyzeParameterSetResponse& response);

// One line of a plot: a value per layer.
struct PlotSeries {
  std::string name;
  std::vector<double> values;
  bool dashed = false;
  int color = -1;  // palette index; -1: the series' position
};

// An SVG line chart of per-layer values on a log10 scale (values <= 0 or not finite are
// left out), with a legend.
std::string VariancePlotSvg(const std::string& title, const std::string& y_label,
                            const std::vector<PlotSeries>& series);

}  // namespace lstmserve::client
