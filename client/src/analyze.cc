#include "analyze.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace lstmserve::client {
namespace {

std::string Escape(const std::string& text) {
  std::string out;
  for (char ch : text) {
    switch (ch) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += ch;
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<v1::Initializer> ParseInitializer(const std::string& text) {
  v1::Initializer init;
  if (!text.empty() && text.front() == '{') {
    auto parsed = google::protobuf::util::JsonStringToMessage(text, &init);
    if (!parsed.ok())
      return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not an Initializer: ", parsed.ToString()));
    return init;
  }
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  const std::string& name = parts[0];
  std::vector<double> args;
  for (size_t i = 1; i < parts.size(); ++i) {
    double v = 0;
    if (!absl::SimpleAtod(parts[i], &v))
      return absl::InvalidArgumentError(absl::StrCat("'", parts[i], "' in '", text, "' is not a number"));
    args.push_back(v);
  }
  const auto need = [&](size_t lo, size_t hi) -> absl::Status {
    if (args.size() < lo || args.size() > hi) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", name, "' takes ", lo, lo == hi ? "" : absl::StrCat(" to ", hi), " number(s) after ':'"));
    }
    return absl::OkStatus();
  };
  absl::Status ok;
  if (name == "kaiming_normal" || name == "kaiming_uniform") {
    ok = need(0, 1);
    auto* k = name == "kaiming_normal" ? init.mutable_kaiming_normal() : init.mutable_kaiming_uniform();
    if (!args.empty()) k->set_a(args[0]);
  } else if (name == "xavier_uniform") {
    ok = need(0, 1);
    auto* x = init.mutable_xavier_uniform();
    if (!args.empty()) x->set_gain(args[0]);
  } else if (name == "xavier_normal") {
    ok = need(0, 1);
    auto* x = init.mutable_xavier_normal();
    if (!args.empty()) x->set_gain(args[0]);
  } else if (name == "orthogonal") {
    ok = need(0, 1);
    auto* o = init.mutable_orthogonal();
    if (!args.empty()) o->set_gain(args[0]);
  } else if (name == "normal") {
    ok = need(1, 1);
    if (ok.ok()) init.mutable_normal()->set_std(args[0]);
  } else if (name == "trunc_normal") {
    ok = need(1, 1);
    if (ok.ok()) init.mutable_trunc_normal()->set_std(args[0]);
  } else if (name == "uniform") {
    ok = need(2, 2);
    if (ok.ok()) {
      init.mutable_uniform()->set_a(args[0]);
      init.mutable_uniform()->set_b(args[1]);
    }
  } else if (name == "constant") {
    ok = need(1, 1);
    if (ok.ok()) init.mutable_constant()->set_value(args[0]);
  } else if (name == "zeros") {
    ok = need(0, 0);
    init.mutable_zeros();
  } else if (name == "ones") {
    ok = need(0, 0);
    init.mutable_ones();
  } else if (name == "eye") {
    ok = need(0, 0);
    init.mutable_eye();
  } else if (name == "dirac") {
    ok = need(0, 1);
    auto* d = init.mutable_dirac();
    if (!args.empty()) d->set_groups(static_cast<int64_t>(args[0]));
  } else if (name == "sparse") {
    ok = need(1, 2);
    if (ok.ok()) init.mutable_sparse()->set_sparsity(args[0]);
    if (ok.ok() && args.size() == 2) init.mutable_sparse()->set_std(args[1]);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown initializer '", name,
        "'; expected kaiming_normal, kaiming_uniform, xavier_uniform, xavier_normal, "
        "orthogonal, normal:STD, uniform:A:B, trunc_normal:STD, constant:V, zeros, ones, eye, dirac[:GROUPS], "
        "sparse:SPARSITY[:STD], or JSON"));
  }
  if (!ok.ok()) return ok;
  return init;
}

std::string AnalysisTable(const std::string& title, const v1::AnalyzeParameterSetResponse& r) {
  std::string out = absl::StrCat(title, "\n");
  if (r.lstm_layers_size() > 0) {
    absl::StrAppend(&out, absl::StrFormat("%5s %10s %10s %10s %10s %10s %10s %8s %8s\n", "layer", "var(i)", "var(f)",
                                          "var(o)", "var(g)", "var(c)", "var(h)", "sat sig", "sat tanh"));
    for (const auto& l : r.lstm_layers()) {
      absl::StrAppend(&out,
                      absl::StrFormat("%5d %10.4g %10.4g %10.4g %10.4g %10.4g %10.4g %7.1f%% %7.1f%%\n", l.layer(),
                                      l.input_gate_variance(), l.forget_gate_variance(), l.output_gate_variance(),
                                      l.cell_gate_variance(), l.c_variance(), l.h_variance(),
                                      100 * l.sigmoid_saturated_fraction(), 100 * l.tanh_saturated_fraction()));
    }
    if (r.weight_storage_errors_size() > 0) {
      absl::StrAppend(&out, "output error of reduced weight storage against float32 (4 rows, top-layer h):\n");
      absl::StrAppend(&out, absl::StrFormat("%-24s %8s %12s %12s\n", "weights", "steps", "max abs", "mean abs"));
      for (const auto& e : r.weight_storage_errors()) {
        for (int i = 0; i < e.steps_size() && i < e.max_abs_error_size() && i < e.mean_abs_error_size(); ++i) {
          absl::StrAppend(&out, absl::StrFormat("%-24s %8d %12.3g %12.3g\n", v1::WeightStorage_Name(e.weight_storage()),
                                                e.steps(i), e.max_abs_error(i), e.mean_abs_error(i)));
        }
      }
    }
  } else {
    absl::StrAppend(&out, absl::StrFormat("%5s %-14s %7s %7s %12s %12s %12s %7s\n", "layer", "tensor", "fan_in",
                                          "fan_out", "forward var", "act var", "grad var", "dead"));
    int index = 0;
    for (const auto& l : r.chain_layers()) {
      absl::StrAppend(&out, absl::StrFormat("%5d %-14s %7d %7d %12.4g %12.4g %12.4g %6.1f%%\n", index++,
                                            l.tensor().substr(0, 14), l.fan_in(), l.fan_out(), l.forward_variance(),
                                            l.activation_variance(), l.gradient_variance(), 100 * l.dead_fraction()));
    }
  }
  return out;
}

std::string VariancePlotSvg(const std::string& title, const std::string& y_label,
                            const std::vector<PlotSeries>& series) {
  constexpr double kWidth = 760, kHeight = 440, kLeft = 80, kRight = 210, kTop = 40, kBottom = 50;
  const double plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  size_t layers = 1;
  for (const auto& s : series) {
    layers = std::max(layers, s.values.size());
    for (double v : s.values) {
      if (v > 0 && std::isfinite(v)) {
        lo = std::min(lo, std::log10(v));
        hi = std::max(hi, std::log10(v));
      }
    }
  }
  if (!std::isfinite(lo)) lo = -1, hi = 1;
  lo = std::floor(lo);
  hi = std::max(std::ceil(hi), lo + 1);
  const auto x_of = [&](size_t i) {
    return kLeft + (layers > 1 ? plot_w * static_cast<double>(i) / static_cast<double>(layers - 1) : plot_w / 2);
  };
  const auto y_of = [&](double v) { return kTop + plot_h * (hi - std::log10(v)) / (hi - lo); };
  static const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                  "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  std::string svg = absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%.0f\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">%s</text>\n",
      kWidth, kHeight, kWidth, kHeight, kLeft + plot_w / 2, Escape(title));
  // Decades.
  const int step = std::max(1, static_cast<int>((hi - lo) / 10));
  for (int d = static_cast<int>(lo); d <= static_cast<int>(hi); d += step) {
    const double y = y_of(std::pow(10.0, d));
    absl::StrAppend(&svg, absl::StrFormat("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n"
                                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">1e%d</text>\n",
                                          kLeft, y, kLeft + plot_w, y, kLeft - 6, y + 4, d));
  }
  for (size_t i = 0; i < layers; ++i) {
    if (layers > 12 && i % ((layers + 9) / 10) != 0 && i + 1 != layers) continue;
    absl::StrAppend(&svg, absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", x_of(i),
                                          kTop + plot_h + 18, static_cast<int>(i)));
  }
  absl::StrAppend(
      &svg,
      absl::StrFormat(
          "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n"
          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">layer</text>\n"
          "<text x=\"18\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 18 %.1f)\">%s (log scale)</text>\n",
          kLeft, kTop, plot_w, plot_h, kLeft + plot_w / 2, kHeight - 10, kTop + plot_h / 2, kTop + plot_h / 2,
          Escape(y_label)));
  for (size_t k = 0; k < series.size(); ++k) {
    const auto& s = series[k];
    const size_t index = s.color >= 0 ? static_cast<size_t>(s.color) : k;
    const char* color = kColors[index % (sizeof(kColors) / sizeof(kColors[0]))];
    std::string points;
    for (size_t i = 0; i < s.values.size(); ++i) {
      const double v = s.values[i];
      if (v > 0 && std::isfinite(v)) absl::StrAppend(&points, absl::StrFormat("%.1f,%.1f ", x_of(i), y_of(v)));
    }
    absl::StrAppend(&svg, absl::StrFormat("<g class=\"series\" data-name=\"%s\"><polyline fill=\"none\" stroke=\"%s\" "
                                          "stroke-width=\"2\"%s points=\"%s\"/></g>\n",
                                          Escape(s.name), color, s.dashed ? " stroke-dasharray=\"6 4\"" : "", points));
    const double ly = kTop + 10 + 18 * static_cast<double>(k);
    absl::StrAppend(
        &svg,
        absl::StrFormat("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"%s/>"
                        "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                        kLeft + plot_w + 12, ly, kLeft + plot_w + 36, ly, color,
                        s.dashed ? " stroke-dasharray=\"6 4\"" : "", kLeft + plot_w + 42, ly + 4, Escape(s.name)));
  }
  absl::StrAppend(&svg, "</svg>\n");
  return svg;
}

}  // namespace lstmserve::client
