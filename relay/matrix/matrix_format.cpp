#include "matrix/matrix_format.h"

#include <algorithm>
#include <cstddef>
#include <map>

#include "common/json.h"

namespace sockrelay {

namespace {

// The probe result of each cell in matrix_cells() order, null where none.
std::vector<const ProbeResult*> index_probes(const std::vector<ProbeResult>& probes) {
  std::vector<const ProbeResult*> by_cell(matrix_cells().size(), nullptr);
  for (const ProbeResult& p : probes) by_cell[matrix_cell_index(p.source, p.target, p.mode)] = &p;
  return by_cell;
}

std::string_view support_symbol(Support support) {
  switch (support) {
    case Support::Supported:
      return "ok";
    case Support::Caveat:
      return "~";
    case Support::Unsupported:
      return "-";
  }
  return "?";
}

std::string_view outcome_symbol(ProbeResult::Outcome outcome) {
  switch (outcome) {
    case ProbeResult::Delivered:
      return "got";
    case ProbeResult::NotDelivered:
      return "lost";
    case ProbeResult::CannotEnterMap:
      return "nomap";
    case ProbeResult::NotTestableHere:
      return "n/t";
    case ProbeResult::Error:
      return "err";
  }
  return "?";
}

std::string_view mode_heading(Mode mode) {
  return mode == Mode::Egress ? "mode egress: the target socket sends the data to its peer (flags 0)"
                              : "mode ingress: the data lands in the target socket's own receive queue "
                                "(BPF_F_INGRESS); routes to subscribers only";
}

// Where this version stays off a kernel path the kernel offers: the
// letter the grid shows, and the note that says why. Empty when it does not.
std::string_view relay_letter(const MatrixCell& cell) {
  if (cell.support == Support::Unsupported) return "";  // the kernel's reason says it all
  switch (cell.relay) {
    case RelayPath::Kernel:
      return "";
    case RelayPath::KernelIfAsked:
      return "k";
    case RelayPath::UserSpace:
      return "u";
    case RelayPath::Refused:
      return "r";
  }
  return "";
}

std::string relay_note(const MatrixCell& cell) {
  switch (cell.relay) {
    case RelayPath::KernelIfAsked:
      return "This version takes it only with datapath = \"kernel\"; \"auto\" takes the " + cell.fallback +
             ", because " + cell.relay_reason;
    case RelayPath::UserSpace:
      return "This version takes the " + cell.fallback + " (datapath = \"kernel\" is refused), because " +
             cell.relay_reason;
    case RelayPath::Refused:
      return "This version runs no route over it: " + cell.relay_reason;
    case RelayPath::Kernel:
      break;
  }
  return "";
}

// Numbered notes: each distinct text once, in order of first appearance.
class Notes {
 public:
  explicit Notes(const std::vector<MatrixCell>& cells) {
    for (const MatrixCell& cell : cells) {
      for (const std::string& text : kernel_notes(cell)) number(text);
      if (!relay_letter(cell).empty()) number(relay_note(cell));
    }
  }
  // The kernel's refs ("2" or "2,3"), then this version's ("u5").
  std::string refs(const MatrixCell& cell) const {
    std::string out;
    for (const std::string& text : kernel_notes(cell)) {
      if (!out.empty()) out += ",";
      out += std::to_string(numbers_.at(text));
    }
    if (std::string_view letter = relay_letter(cell); !letter.empty())
      out += " " + std::string(letter) + std::to_string(numbers_.at(relay_note(cell)));
    return out;
  }
  const std::vector<std::string>& texts() const { return texts_; }

 private:
  static std::vector<std::string> kernel_notes(const MatrixCell& cell) {
    std::vector<std::string> texts = cell_reasons(cell);
    if (cell.support == Support::Unsupported)
      for (std::string& text : texts) text += ". Instead (datapath \"auto\"): " + cell.fallback;
    return texts;
  }
  void number(const std::string& text) {
    if (numbers_.count(text)) return;
    numbers_[text] = static_cast<int>(texts_.size()) + 1;
    texts_.push_back(text);
  }

  std::map<std::string, int> numbers_;
  std::vector<std::string> texts_;
};

std::string pad(std::string text, size_t width) {
  if (text.size() < width) text.append(width - text.size(), ' ');
  return text;
}

std::string trim_right(std::string text) {
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

// The two grids: each cell's text from `cell_text(index)`.
template <typename CellText>
std::string grids(const CellText& cell_text) {
  const std::string corner = "source \\ target";
  size_t row_width = corner.size();
  size_t col_width = 0;
  for (EndpointKind kind : kAllKinds) {
    row_width = std::max(row_width, kind_name(kind).size());
    col_width = std::max(col_width, kind_name(kind).size());
  }
  for (size_t i = 0; i < matrix_cells().size(); ++i) col_width = std::max(col_width, cell_text(i).size());
  row_width += 2;
  col_width += 2;
  std::string out;
  for (Mode mode : kAllModes) {
    out += "\n" + std::string(mode_heading(mode)) + "\n";
    std::string header = pad(corner, row_width);
    for (EndpointKind target : kAllKinds) header += pad(std::string(kind_name(target)), col_width);
    out += trim_right(header) + "\n";
    for (EndpointKind source : kAllKinds) {
      std::string row = pad(std::string(kind_name(source)), row_width);
      for (EndpointKind target : kAllKinds)
        row += pad(cell_text(matrix_cell_index(source, target, mode)), col_width);
      out += trim_right(row) + "\n";
    }
  }
  return out;
}

std::string legend(bool probed) {
  std::string out =
      "\nLegend: ok = in-kernel redirect works; ~N = works, with the caveat in note N; "
      "-N = no kernel path (note N says why and what datapath \"auto\" does instead). "
      "Where this version stays off a kernel path the kernel offers: kN = only with datapath = \"kernel\"; "
      "uN = user space; rN = no route (note N says why).\n";
  if (probed) {
    out +=
        "Measured: [got] payload delivered byte-exact; [lost] nothing arrived; [nomap] the sockmap refused "
        "the socket; [n/t] not testable on this machine; [err] the probe failed. "
        "!! = the measurement DISAGREES with the matrix.\n";
  }
  return out;
}

// How the measurements compare with the matrix, disagreements listed.
std::string probe_summary(const std::vector<const ProbeResult*>& measured) {
  const std::vector<MatrixCell>& cells = matrix_cells();
  size_t agree = 0, untestable = 0, missing = 0;
  std::vector<std::string> disagreements;
  std::vector<std::string> untestable_reasons;
  for (size_t i = 0; i < cells.size(); ++i) {
    const ProbeResult* p = measured[i];
    if (!p) {
      ++missing;
    } else if (p->outcome == ProbeResult::NotTestableHere) {
      ++untestable;
      if (std::find(untestable_reasons.begin(), untestable_reasons.end(), p->detail) ==
          untestable_reasons.end())
        untestable_reasons.push_back(p->detail);
    } else if (probe_agrees(cells[i], *p)) {
      ++agree;
    } else {
      disagreements.push_back(cell_label(cells[i]) + ": matrix says " +
                              std::string(support_name(cells[i].support)) + ", probe measured " +
                              std::string(outcome_name(p->outcome)) + ": " + p->detail);
    }
  }
  std::string out = "\nProbe on this kernel: " + std::to_string(agree) + " cells agree, " +
                    std::to_string(disagreements.size()) + " DISAGREE, " + std::to_string(untestable) +
                    " not testable here";
  if (missing) out += ", " + std::to_string(missing) + " not probed";
  out += ".\n";
  for (const std::string& why : untestable_reasons) out += "  not testable: " + why + "\n";
  if (!disagreements.empty()) {
    out += "\n!! MISMATCHES between the matrix and this kernel:\n";
    for (const std::string& line : disagreements) out += "  !! " + line + "\n";
  }
  return out;
}

}  // namespace

std::string format_matrix_grid(const std::vector<ProbeResult>& probes) {
  const std::vector<MatrixCell>& cells = matrix_cells();
  const std::vector<const ProbeResult*> measured = index_probes(probes);
  const bool probed = !probes.empty();
  const Notes notes(cells);

  auto cell_text = [&](size_t i) {
    const MatrixCell& cell = cells[i];
    std::string text = std::string(support_symbol(cell.support)) + notes.refs(cell);
    if (!probed) return text;
    const ProbeResult* p = measured[i];
    if (!p) return text + " [?]";
    text += " [" + std::string(outcome_symbol(p->outcome)) + "]";
    return probe_agrees(cell, *p) ? text : "!! " + text;
  };

  std::string out = "sockrelay kernel data path matrix";
  out += probed ? " (expected [measured on this kernel])\n" : "\n";
  out += grids(cell_text);
  out += legend(probed);
  out += "\nNotes:\n";
  int n = 0;
  for (const std::string& text : notes.texts()) out += "  " + std::to_string(++n) + ". " + text + "\n";
  for (const std::string& text : matrix_general_notes()) out += "  * " + text + "\n";
  if (probed) out += probe_summary(measured);
  return out;
}

std::string format_matrix_json(const std::vector<ProbeResult>& probes) {
  const std::vector<MatrixCell>& cells = matrix_cells();
  const std::vector<const ProbeResult*> measured = index_probes(probes);
  JsonWriter json;
  json.begin_array();
  for (size_t i = 0; i < cells.size(); ++i) {
    const MatrixCell& cell = cells[i];
    json.begin_object()
        .field("source", kind_name(cell.source))
        .field("target", kind_name(cell.target))
        .field("mode", mode_name(cell.mode))
        .field("support", support_name(cell.support));
    json.key("min-kernel");
    if (cell.min_kernel.known())
      json.value(kernel_version_name(cell.min_kernel));
    else
      json.null();
    json.field("reason", cell.reason)
        .field("fallback", cell.fallback)
        .field("relay", relay_path_name(cell.relay))
        .field("relay-reason", cell.relay_reason);
    if (const ProbeResult* p = measured[i]) {
      json.key("probe")
          .begin_object()
          .field("outcome", outcome_name(p->outcome))
          .field("detail", p->detail)
          .field("agrees", probe_agrees(cell, *p))
          .end_object();
    }
    json.end_object();
  }
  json.end_array();
  return json.str();
}

}  // namespace sockrelay
