// Structured logs: one JSON object per line on stderr, e.g.
//   {"ts":"2026-11-27T22:13:00.123Z","level":"info","msg":"serving","port":50051}
// Lifecycle events are logged at info; per-ticket events only at debug.
// Thread-safe: each line is written with one write(2).
#ifndef MATCHD_SERVICE_LOG_H_
#define MATCHD_SERVICE_LOG_H_

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"

namespace matchd {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// "debug", "info", "warning" or "error"; false for anything else.
bool ParseLogLevel(absl::string_view text, LogLevel* level);
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);

// A field value: a string (quoted and escaped) or a number (as is).
class LogValue {
 public:
  LogValue(absl::string_view s) : text_(Quote(s)) {}  // NOLINT: implicit on purpose
  LogValue(const std::string& s) : text_(Quote(s)) {}  // NOLINT
  LogValue(const char* s) : text_(Quote(s)) {}  // NOLINT
  LogValue(int64_t v) : text_(std::to_string(v)) {}  // NOLINT
  LogValue(int v) : text_(std::to_string(v)) {}  // NOLINT
  LogValue(uint64_t v) : text_(std::to_string(v)) {}  // NOLINT
  LogValue(double v);  // NOLINT
  LogValue(bool v) : text_(v ? "true" : "false") {}  // NOLINT
  const std::string& json() const { return text_; }

 private:
  static std::string Quote(absl::string_view s);
  std::string text_;
};

using LogField = std::pair<absl::string_view, LogValue>;

void Log(LogLevel level, absl::string_view msg, std::initializer_list<LogField> fields = {});

// Routes gRPC's and protobuf's own log lines through Log, so that every line
// is JSON.
void RouteGrpcLogs();

}  // namespace matchd

#endif  // MATCHD_SERVICE_LOG_H_
