#pragma once
// Command-line plumbing of the hgad program: option parsing, progress reporting and a small JSON
// writer. Private to apps/; the library itself never prints.

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace hgad_cli {

/// A command line the program cannot act on: printed with a pointer to --help, exit status 2.
class UsageError : public std::runtime_error {
 public:
  explicit UsageError(const std::string& message) : std::runtime_error(message) {}
};

/// One option of a subcommand: `--name VALUE` when `value` names the value, a flag otherwise.
struct OptionSpec {
  std::string name;
  std::string value;
  std::string help;
};

/// The parsed options and positional arguments of one subcommand.
class Args {
 public:
  /// Parses argv[first..argc). `--name=value` and `--name value` are both accepted; an unknown
  /// option, a missing value, a repeated option or an unexpected positional argument is a
  /// UsageError. `--help` / `-h` sets help().
  Args(const std::string& command, int argc, char** argv, int first,
       const std::vector<OptionSpec>& specs, bool positionals_allowed)
      : m_command(command) {
    for (int i = first; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        m_help = true;
        continue;
      }
      if (arg.size() > 2 && arg.compare(0, 2, "--") == 0) {
        std::string name = arg.substr(2), value;
        bool inline_value = false;
        const auto eq = name.find('=');
        if (eq != std::string::npos) {
          value = name.substr(eq + 1);
          name = name.substr(0, eq);
          inline_value = true;
        }
        const OptionSpec* spec = nullptr;
        for (const auto& s : specs)
          if (s.name == name) spec = &s;
        if (!spec) throw UsageError("unknown option '--" + name + "'");
        if (m_values.count(name)) throw UsageError("option '--" + name + "' is given twice");
        if (spec->value.empty()) {
          if (inline_value) throw UsageError("option '--" + name + "' takes no value");
          m_values[name] = "";
        } else {
          if (!inline_value) {
            if (i + 1 >= argc)
              throw UsageError("option '--" + name + "' needs a value (" + spec->value + ")");
            value = argv[++i];
          }
          if (value.empty()) throw UsageError("option '--" + name + "' has an empty value");
          m_values[name] = value;
        }
      } else if (arg.size() > 1 && arg[0] == '-' && arg != "-") {
        throw UsageError("unknown option '" + arg + "'");
      } else {
        if (!positionals_allowed) throw UsageError("unexpected argument '" + arg + "'");
        m_positionals.push_back(arg);
      }
    }
  }

  bool help() const { return m_help; }
  bool has(const std::string& name) const { return m_values.count(name) != 0; }
  const std::vector<std::string>& positionals() const { return m_positionals; }

  /// The value of a required option; a UsageError when it is absent.
  std::string required(const std::string& name) const {
    const auto it = m_values.find(name);
    if (it == m_values.end()) throw UsageError("missing required option --" + name);
    return it->second;
  }
  std::string get(const std::string& name, const std::string& fallback) const {
    const auto it = m_values.find(name);
    return it == m_values.end() ? fallback : it->second;
  }
  /// An integer option in [lo, hi]; a UsageError naming the option and the value otherwise.
  std::int64_t get_int(const std::string& name, std::int64_t fallback, std::int64_t lo,
                       std::int64_t hi) const {
    const auto it = m_values.find(name);
    if (it == m_values.end()) return fallback;
    std::int64_t v = 0;
    std::size_t used = 0;
    try {
      v = std::stoll(it->second, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != it->second.size())
      throw UsageError("--" + name + " must be an integer, got '" + it->second + "'");
    if (v < lo || v > hi)
      throw UsageError("--" + name + " must be in [" + std::to_string(lo) + ", " +
                       std::to_string(hi) + "], got " + it->second);
    return v;
  }

 private:
  std::string m_command;
  std::map<std::string, std::string> m_values;
  std::vector<std::string> m_positionals;
  bool m_help = false;
};

/// "--name VALUE  help" lines for a usage text.
inline std::string describe_options(const std::vector<OptionSpec>& specs) {
  std::ostringstream out;
  for (const auto& s : specs) {
    std::string left = "  --" + s.name + (s.value.empty() ? "" : " " + s.value);
    out << std::left << std::setw(28) << left;
    if (left.size() >= 28) out << "\n" << std::string(28, ' ');
    out << s.help << "\n";
  }
  out << std::left << std::setw(28) << "  --help"
      << "show this help\n";
  return out.str();
}

/// "1:05" or "1:02:03".
inline std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const auto s = static_cast<std::int64_t>(seconds + 0.5);
  char buffer[32];
  if (s >= 3600)
    std::snprintf(buffer, sizeof(buffer), "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  else
    std::snprintf(buffer, sizeof(buffer), "%lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  return buffer;
}

/// Progress of a counted task on stderr: a redrawn bar with rate and ETA when stderr is a
/// terminal, otherwise one plain line at the start, every `plain_interval` seconds and at the end
/// (so logs stay readable).
/// Set by the ranks other than 0 of a data-parallel training (hgad train under mpirun): their
/// Progress bars draw nothing, so that rank 0 alone reports.
inline bool progress_silenced = false;

class Progress {
 public:
  Progress(std::string label, std::int64_t total, std::string unit, double plain_interval = 10.0)
      : m_label(std::move(label)),
        m_unit(std::move(unit)),
        m_total(total),
        m_tty(::isatty(::fileno(stderr)) == 1),
        m_plain_interval(plain_interval),
        m_start(Clock::now()),
        m_last_draw(m_start) {
    if (!m_tty && !progress_silenced)
      std::fprintf(stderr, "%s: 0/%lld %s\n", m_label.c_str(), static_cast<long long>(m_total),
                   m_unit.c_str());
  }
  ~Progress() {
    if (!m_finished && m_tty && m_drawn) std::fprintf(stderr, "\n");
  }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  /// Sets the count of finished items and an optional status text (for example the loss).
  void update(std::int64_t done, const std::string& status = "") {
    m_done = done;
    m_status = status;
    const auto now = Clock::now();
    const double since = std::chrono::duration<double>(now - m_last_draw).count();
    if (m_tty ? since >= 0.1 : since >= m_plain_interval) {
      draw(false);
      m_last_draw = now;
    }
  }
  void advance(std::int64_t n = 1, const std::string& status = "") { update(m_done + n, status); }

  /// Draws the final state and ends the line.
  void finish(const std::string& status = "") {
    if (m_finished) return;
    if (!status.empty()) m_status = status;
    m_done = m_total;
    draw(true);
    m_finished = true;
  }
  double elapsed() const { return std::chrono::duration<double>(Clock::now() - m_start).count(); }

  /// Erases the bar from the terminal so that a line written now takes its place; the next
  /// update draws it again below that line. Nothing to do when stderr is not a terminal.
  void clear() {
    if (!m_tty || !m_drawn || m_finished) return;
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    m_drawn = false;
    m_last_draw = Clock::time_point{};
  }

 private:
  using Clock = std::chrono::steady_clock;

  void draw(bool final) {
    if (progress_silenced) return;
    const double t = elapsed();
    const double rate = t > 0 ? static_cast<double>(m_done) / t : 0.0;
    const double eta = rate > 0 ? static_cast<double>(m_total - m_done) / rate : -1.0;
    const double fraction =
        m_total > 0 ? static_cast<double>(m_done) / static_cast<double>(m_total) : 1.0;
    char rate_text[64];
    std::snprintf(rate_text, sizeof(rate_text), rate >= 100 ? "%.0f %s/s" : "%.2f %s/s", rate,
                  m_unit.c_str());
    if (m_tty) {
      constexpr int width = 28;
      const int filled = static_cast<int>(fraction * width);
      std::string bar(static_cast<std::size_t>(filled), '#');
      bar.resize(width, '.');
      std::fprintf(stderr, "\r\033[K%s [%s] %3.0f%% %lld/%lld %s %s %s%s%s", m_label.c_str(),
                   bar.c_str(), 100 * fraction, static_cast<long long>(m_done),
                   static_cast<long long>(m_total), rate_text, final ? "in" : "ETA",
                   format_duration(final ? t : eta).c_str(), m_status.empty() ? "" : "  ",
                   m_status.c_str());
      if (final) std::fprintf(stderr, "\n");
      m_drawn = true;
    } else {
      std::fprintf(stderr, "%s: %lld/%lld %s (%.0f%%), %s, %s %s%s%s\n", m_label.c_str(),
                   static_cast<long long>(m_done), static_cast<long long>(m_total), m_unit.c_str(),
                   100 * fraction, rate_text, final ? "took" : "ETA",
                   format_duration(final ? t : eta).c_str(), m_status.empty() ? "" : ", ",
                   m_status.c_str());
    }
    std::fflush(stderr);
  }

  std::string m_label, m_unit, m_status;
  std::int64_t m_total = 0, m_done = 0;
  bool m_tty = false, m_drawn = false, m_finished = false;
  double m_plain_interval;
  Clock::time_point m_start, m_last_draw;
};

/// A minimal JSON builder: objects keep insertion order; non-finite numbers become null, zero of
/// either sign is written 0; dump() ends with a newline.
class Json {
 public:
  static Json object() { return Json(Kind::object); }
  static Json array() { return Json(Kind::array); }
  static Json number(double v) {
    Json j(Kind::number);
    j.m_number = v;
    return j;
  }
  static Json integer(std::int64_t v) {
    Json j(Kind::integer);
    j.m_integer = v;
    return j;
  }
  static Json string(std::string v) {
    Json j(Kind::string);
    j.m_string = std::move(v);
    return j;
  }
  static Json boolean(bool v) {
    Json j(Kind::boolean);
    j.m_integer = v ? 1 : 0;
    return j;
  }

  Json& set(const std::string& key, Json value) {
    m_keys.push_back(key);
    m_items.push_back(std::move(value));
    return *this;
  }
  Json& push(Json value) {
    m_items.push_back(std::move(value));
    return *this;
  }

  std::string dump(int indent = 0) const {
    std::ostringstream out;
    write(out, indent, 0);
    out << "\n";
    return out.str();
  }

 private:
  enum class Kind { object, array, number, integer, string, boolean };
  explicit Json(Kind kind) : m_kind(kind) {}

  static void quote(std::ostream& out, const std::string& s) {
    out << '"';
    for (unsigned char c : s) {
      switch (c) {
        case '"':
          out << "\\\"";
          break;
        case '\\':
          out << "\\\\";
          break;
        case '\n':
          out << "\\n";
          break;
        case '\r':
          out << "\\r";
          break;
        case '\t':
          out << "\\t";
          break;
        default:
          if (c < 0x20) {
            char buffer[8];
            std::snprintf(buffer, sizeof(buffer), "\\u%04x", c);
            out << buffer;
          } else {
            out << c;
          }
      }
    }
    out << '"';
  }

  void write(std::ostream& out, int indent, int depth) const {
    const std::string pad(static_cast<std::size_t>(indent * (depth + 1)), ' ');
    const std::string end_pad(static_cast<std::size_t>(indent * depth), ' ');
    const char* newline = indent > 0 ? "\n" : "";
    switch (m_kind) {
      case Kind::number:
        if (m_number == 0) {
          out << '0';  // not "-0", which some readers take for a string or refuse
        } else if (std::isfinite(m_number)) {
          char buffer[32];
          std::snprintf(buffer, sizeof(buffer), "%.17g", m_number);
          out << buffer;
        } else {
          out << "null";
        }
        break;
      case Kind::integer:
        out << m_integer;
        break;
      case Kind::boolean:
        out << (m_integer ? "true" : "false");
        break;
      case Kind::string:
        quote(out, m_string);
        break;
      case Kind::object:
      case Kind::array: {
        const bool object = m_kind == Kind::object;
        out << (object ? '{' : '[');
        if (m_items.empty()) {
          out << (object ? '}' : ']');
          break;
        }
        out << newline;
        for (std::size_t i = 0; i < m_items.size(); ++i) {
          out << pad;
          if (object) {
            quote(out, m_keys[i]);
            out << (indent > 0 ? ": " : ":");
          }
          m_items[i].write(out, indent, depth + 1);
          if (i + 1 < m_items.size()) out << ',';
          out << newline;
        }
        out << end_pad << (object ? '}' : ']');
        break;
      }
    }
  }

  Kind m_kind;
  double m_number = 0;
  std::int64_t m_integer = 0;
  std::string m_string;
  std::vector<std::string> m_keys;
  std::vector<Json> m_items;
};

}  // namespace hgad_cli
