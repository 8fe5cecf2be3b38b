// matchctl: a command-line client for matchd.
//
//   matchctl [--server HOST:PORT] [--json] [--timeout D] [--tls_ca FILE] COMMAND ...
//
// Exit status: 0 when the call ends OK, 1 for a gRPC error, 2 for bad usage,
// 130 when interrupted (SIGINT cancels the call in flight first).
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "matchmaking/v1/matchmaking.grpc.pb.h"
#include "service/command_line.h"
#include "service/version.h"

namespace mm = ::matchmaking::v1;

// A flag that may be given several times. absl parses every occurrence into a
// fresh copy of the default, so the occurrences are collected on the side
// (one list per kTag) and the flag's value is the list so far. Empty text is
// skipped: absl's debug check parses the unparsed (empty) default.
template <int kTag>
struct RepeatedFlag {
  std::vector<std::string> values;
};
template <int kTag>
bool AbslParseFlag(absl::string_view text, RepeatedFlag<kTag>* flag, std::string* /*error*/) {
  static auto* const all = new std::vector<std::string>();
  if (text.empty()) return true;
  all->emplace_back(text);
  flag->values = *all;
  return true;
}
template <int kTag>
std::string AbslUnparseFlag(const RepeatedFlag<kTag>& flag) {
  return absl::StrJoin(flag.values, " ");
}

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "matchd address (host:port).");
ABSL_FLAG(bool, json, false, "Print responses and events as single-line JSON objects.");
ABSL_FLAG(absl::Duration, timeout, absl::ZeroDuration(),
          "Deadline of the call; 0: the command's default (10s for create, get, cancel and "
          "queues; none for find and watch, which wait for a match); inf: none.");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA bundle: connect with TLS and trust servers it signed (empty: plaintext).");
ABSL_FLAG(std::string, tls_cert, "", "With --tls_ca: PEM client certificate chain (mTLS).");
ABSL_FLAG(std::string, tls_key, "", "With --tls_cert: its PEM private key.");
ABSL_FLAG(std::string, queue, "", "find, create: the queue to join.");
ABSL_FLAG(RepeatedFlag<0>, player, {},
          "find, create: a party member as ID[:RATING[:REGION=MS,REGION=MS...]], e.g. "
          "alice:1500:eu=20,us=90. Repeat for a party.");
ABSL_FLAG(RepeatedFlag<1>, attr, {},
          "find, create: an attribute key=value given to every player. Repeatable.");
ABSL_FLAG(uint64_t, after_seq, 0, "watch: resume after this event seq.");

namespace {

constexpr char kUsage[] = R"(usage: matchctl [--server HOST:PORT] [--json] [--timeout D] [--tls_ca FILE]
                COMMAND ...
commands:
  find   --queue Q --player ID[:RATING[:REGION=MS,...]] ... [--attr K=V ...]
         find a match on a held stream; prints each event (Ctrl-C withdraws)
  create --queue Q --player ... [--attr K=V ...]   create a ticket for polling
  get    TICKET_ID                                 show a ticket
  cancel TICKET_ID                                 cancel a ticket
  watch  TICKET_ID [--after_seq N]                 stream a ticket's events
  queues                                           list the queues)";

constexpr absl::Duration kDefaultUnaryTimeout = absl::Seconds(10);

// Plaintext, or TLS with --tls_ca (and a client certificate with --tls_cert).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials() {
  const std::string ca = absl::GetFlag(FLAGS_tls_ca);
  const std::string cert = absl::GetFlag(FLAGS_tls_cert);
  const std::string key = absl::GetFlag(FLAGS_tls_key);
  if (ca.empty()) {
    if (!cert.empty() || !key.empty()) {
      return absl::InvalidArgumentError("--tls_cert and --tls_key need --tls_ca");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (cert.empty() != key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> roots = matchd::ReadPemFile("tls_ca", ca);
  if (!roots.ok()) return roots.status();
  ssl.pem_root_certs = *roots;
  if (!cert.empty()) {
    absl::StatusOr<std::string> chain = matchd::ReadPemFile("tls_cert", cert);
    if (!chain.ok()) return chain.status();
    absl::StatusOr<std::string> private_key = matchd::ReadPemFile("tls_key", key);
    if (!private_key.ok()) return private_key.status();
    ssl.pem_cert_chain = *chain;
    ssl.pem_private_key = *private_key;
  }
  return grpc::SslCredentials(ssl);
}

int Usage(const std::string& message) {
  std::cerr << "matchctl: " << message << "\n" << kUsage << "\nflags: --help lists them all"
            << std::endl;
  return 2;
}

const char* CodeName(grpc::StatusCode code) {
  // clang-format off
  static const char* const kNames[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
      "UNAUTHENTICATED"};
  // clang-format on
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : "UNKNOWN_CODE";
}

absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

std::string FormatTime(const google::protobuf::Timestamp& t) {
  const absl::Time time = absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", time, absl::UTCTimeZone());
}

// Durations for people: "2m", "5.3s".
std::string Short(const google::protobuf::Duration& d) {
  const absl::Duration shown = absl::Trunc(FromProto(d), absl::Milliseconds(100));
  return shown == absl::ZeroDuration() ? "0s" : absl::FormatDuration(shown);
}

std::string ToJson(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;  // single line by default
  if (!google::protobuf::util::MessageToJsonString(message, &out, options).ok()) {
    return "{}";
  }
  return out;
}

// "ID[:RATING[:REGION=MS,REGION=MS...]]"
bool ParsePlayer(const std::string& spec, const std::vector<std::string>& attrs, mm::Player* player,
                 std::string* error) {
  const std::vector<std::string> parts = absl::StrSplit(spec, absl::MaxSplits(':', 2));
  *error = absl::StrCat("--player \"", spec, "\": ");
  if (parts[0].empty()) return absl::StrAppend(error, "the player id is empty"), false;
  player->set_id(parts[0]);
  if (parts.size() > 1 && !parts[1].empty()) {
    double rating = 0;
    if (!absl::SimpleAtod(parts[1], &rating)) {
      return absl::StrAppend(error, "rating \"", parts[1], "\" is not a number"), false;
    }
    player->set_rating(rating);
  }
  if (parts.size() > 2) {
    for (absl::string_view entry : absl::StrSplit(parts[2], ',', absl::SkipEmpty())) {
      const std::vector<std::string> kv = absl::StrSplit(entry, absl::MaxSplits('=', 1));
      uint32_t ms = 0;
      if (kv.size() != 2 || kv[0].empty() || !absl::SimpleAtoi(kv[1], &ms)) {
        return absl::StrAppend(error, "latency \"", entry, "\" is not REGION=MS"), false;
      }
      (*player->mutable_latency_ms())[kv[0]] = ms;
    }
  }
  for (const std::string& attr : attrs) {
    const std::vector<std::string> kv = absl::StrSplit(attr, absl::MaxSplits('=', 1));
    if (kv.size() != 2 || kv[0].empty()) {
      *error = absl::StrCat("--attr \"", attr, "\": expected key=value");
      return false;
    }
    (*player->mutable_attributes())[kv[0]] = kv[1];
  }
  return true;
}

// Fills queue and players from the flags, or returns a usage error.
template <typename Request>
std::string BuildPartyRequest(Request* request) {
  request->set_queue(absl::GetFlag(FLAGS_queue));
  if (request->queue().empty()) return "--queue is required";
  const std::vector<std::string> players = absl::GetFlag(FLAGS_player).values;
  if (players.empty()) return "at least one --player is required";
  const std::vector<std::string> attrs = absl::GetFlag(FLAGS_attr).values;
  std::string error;
  for (const std::string& spec : players) {
    if (!ParsePlayer(spec, attrs, request->add_players(), &error)) return error;
  }
  return "";
}

std::string PlayerList(const google::protobuf::RepeatedPtrField<mm::Player>& players) {
  std::vector<std::string> out;
  for (const mm::Player& p : players) out.push_back(absl::StrCat(p.id(), " (", p.rating(), ")"));
  return absl::StrJoin(out, ", ");
}

void PrintMatch(const mm::Match& match) {
  const mm::MatchQuality& quality = match.quality();
  for (int i = 0; i < match.teams_size(); ++i) {
    const mm::Team& team = match.teams(i);
    std::string win;
    if (i < quality.win_probability_size()) {
      win = absl::StrFormat("; wins %.0f%%", 100 * quality.win_probability(i));
    }
    std::cout << absl::StrFormat("  team %d: %s; mean %s%s\n", i, PlayerList(team.players()),
                                 absl::StrCat(team.mean_rating()), win);
  }
  std::cout << absl::StrFormat("  quality: rating spread %s, team gap %s, mean wait %s\n",
                               absl::StrCat(quality.rating_spread()),
                               absl::StrCat(quality.team_gap()), Short(quality.mean_wait()));
  if (!quality.region().empty()) {
    std::vector<std::string> latencies;
    for (const mm::Team& team : match.teams()) {
      for (const mm::Player& p : team.players()) {
        auto it = quality.latency_ms().find(p.id());
        if (it != quality.latency_ms().end()) {
          latencies.push_back(absl::StrCat(p.id(), " ", it->second, " ms"));
        }
      }
    }
    std::cout << absl::StrFormat("  region: %s (%s)\n", quality.region(),
                                 absl::StrJoin(latencies, ", "));
  }
}

void PrintEvent(const mm::MatchEvent& ev) {
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << ToJson(ev) << std::endl;
    return;
  }
  switch (ev.event_case()) {
    case mm::MatchEvent::kQueued:
      std::cout << absl::StrFormat("queued    ticket %s in %s (%d players waiting, max wait %s)\n",
                                   ev.ticket_id(), ev.queued().queue(),
                                   ev.queued().players_waiting(), Short(ev.queued().max_wait()));
      break;
    case mm::MatchEvent::kSearching: {
      const mm::Searching& s = ev.searching();
      std::string window;
      if (s.rating_window() > 0) window = absl::StrFormat(", window %.0f", s.rating_window());
      std::cout << absl::StrFormat("searching waited %s%s, %d players waiting: %s\n",
                                   Short(s.waited()), window, s.players_waiting(), s.reason());
      break;
    }
    case mm::MatchEvent::kMatched:
      // The ticket too: a ticket matched at once was never told `queued`.
      std::cout << absl::StrFormat("matched   ticket %s: match %s in %s\n", ev.ticket_id(),
                                   ev.matched().match().match_id(), ev.matched().match().queue());
      PrintMatch(ev.matched().match());
      break;
    default:
      std::cout << absl::StrFormat("event     seq %d of ticket %s (unknown kind)\n", ev.seq(),
                                   ev.ticket_id());
  }
  std::cout << std::flush;
}

void PrintTicket(const mm::Ticket& t) {
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << ToJson(t) << std::endl;
    return;
  }
  std::cout << absl::StrFormat("ticket   %s\nqueue    %s\nstate    %s\nplayers  %s\n",
                               t.ticket_id(), t.queue(), mm::Ticket::State_Name(t.state()),
                               PlayerList(t.players()));
  std::cout << absl::StrFormat("created  %s\nlast seq %d\n", FormatTime(t.created()), t.last_seq());
  if (t.has_expires()) std::cout << "expires  " << FormatTime(t.expires()) << "\n";
  if (!t.detail().empty()) std::cout << "detail   " << t.detail() << "\n";
  if (t.has_match()) {
    std::cout << "match    " << t.match().match_id() << "\n";
    PrintMatch(t.match());
  }
  std::cout << std::flush;
}

void PrintQueues(const mm::ListQueuesResponse& response) {
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << ToJson(response) << std::endl;
    return;
  }
  size_t width = 5;
  for (const mm::QueueInfo& q : response.queues()) width = std::max(width, q.name().size());
  const std::string row = absl::StrCat("%-", width, "s  %-7s %5s  %-5s  %8s  %7s  %7s  %7s  %s\n");
  const auto format = absl::ParsedFormat<'s', 's', 's', 's', 's', 's', 's', 's', 's'>::New(row);
  std::cout << absl::StrFormat(*format, "QUEUE", "TEAMS", "PARTY", "RATED", "MAX WAIT", "TICKETS",
                               "PLAYERS", "MATCHES", "DESCRIPTION");
  for (const mm::QueueInfo& q : response.queues()) {
    std::cout << absl::StrFormat(
        *format, q.name(), absl::StrCat(q.team_count(), "x", q.team_size()),
        absl::StrCat(q.max_party_size()), q.rated() ? "yes" : "no", Short(q.max_wait()),
        absl::StrCat(q.tickets_waiting()), absl::StrCat(q.players_waiting()),
        absl::StrCat(q.matches_formed()), q.description());
  }
  std::cout << std::flush;
}

// Turns SIGINT into ctx->TryCancel(). Signals are blocked in every thread
// (the constructor runs before gRPC starts any) and taken by sigwait on a
// thread of our own, so no code runs in a signal handler. Stop() wakes that
// thread with SIGUSR1.
class InterruptWatcher {
 public:
  InterruptWatcher() {
    sigemptyset(&signals_);
    sigaddset(&signals_, SIGINT);
    sigaddset(&signals_, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
  }
  void Start(grpc::ClientContext* ctx) {
    thread_ = std::thread([this, ctx] {
      int sig = 0;
      if (sigwait(&signals_, &sig) == 0 && sig == SIGINT) {
        interrupted_ = true;
        ctx->TryCancel();
      }
    });
  }
  bool interrupted() const { return interrupted_; }
  // Returns whether SIGINT arrived.
  bool Stop() {
    if (thread_.joinable()) {
      pthread_kill(thread_.native_handle(), SIGUSR1);
      thread_.join();
    }
    return interrupted_;
  }

 private:
  sigset_t signals_;
  std::thread thread_;
  std::atomic<bool> interrupted_{false};
};

// The exit status for a finished call.
int Done(const grpc::Status& status, InterruptWatcher* watcher) {
  if (watcher->Stop()) {
    std::cerr << "matchctl: interrupted; the call was cancelled" << std::endl;
    return 130;
  }
  if (status.ok()) return 0;
  std::cerr << "matchctl: " << CodeName(status.error_code()) << ": " << status.error_message()
            << std::endl;
  return 1;
}

// Prints each event; `*ticket_id` is the ticket's id once an event named it.
template <typename Event>
grpc::Status Stream(std::unique_ptr<grpc::ClientReader<Event>> reader, std::string* ticket_id) {
  Event ev;
  while (reader->Read(&ev)) {
    *ticket_id = ev.ticket_id();
    PrintEvent(ev);
  }
  return reader->Finish();
}

// After Ctrl-C on `find`: closing the call leaves the ticket waiting for the
// queue's re-attach grace (the player cannot queue again until it ends), so
// it is cancelled outright.
void Withdraw(mm::Matchmaker::Stub* stub, const std::string& ticket_id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + kDefaultUnaryTimeout));
  mm::CancelTicketRequest request;
  request.set_ticket_id(ticket_id);
  mm::Ticket ticket;
  const grpc::Status status = stub->CancelTicket(&ctx, request, &ticket);
  if (status.ok()) {
    std::cerr << "matchctl: ticket " << ticket_id << " withdrawn" << std::endl;
  } else {
    std::cerr << "matchctl: withdrawing ticket " << ticket_id
              << " failed: " << CodeName(status.error_code()) << ": " << status.error_message()
              << std::endl;
  }
}

}  // namespace

int main(int argc, char** argv) {
  InterruptWatcher watcher;  // first, before any thread exists
  const matchd::CommandLine command_line = matchd::ParseFlags(argc, argv);
  if (command_line.help) {
    std::cout << kUsage << "\nflags:\n";
    matchd::PrintFlags(std::cout);
    return 0;
  }
  if (command_line.version) {  // like --help: wins over anything after it
    std::cout << matchd::VersionLine("matchctl") << "\n";
    return 0;
  }
  if (!command_line.error.empty()) return Usage(command_line.error);
  const std::vector<std::string>& positional = command_line.positional;
  if (positional.empty()) return Usage("no command given");
  const std::string command = positional[0];
  const std::vector<std::string> args(positional.begin() + 1, positional.end());
  const auto want_args = [&](size_t n, const char* what) -> std::string {
    if (args.size() == n) return "";
    return absl::StrCat(command, " takes ", n == 0 ? "no arguments" : what, ", got ", args.size(),
                        " argument(s)");
  };

  // Check usage before connecting.
  std::string error;
  mm::FindMatchRequest find;
  mm::CreateTicketRequest create;
  if (command == "find") {
    error = want_args(0, "");
    if (error.empty()) error = BuildPartyRequest(&find);
  } else if (command == "create") {
    error = want_args(0, "");
    if (error.empty()) error = BuildPartyRequest(&create);
  } else if (command == "get" || command == "cancel" || command == "watch") {
    error = want_args(1, "one TICKET_ID");
  } else if (command == "queues") {
    error = want_args(0, "");
  } else {
    error = absl::StrCat("unknown command \"", command, "\"");
  }
  // A flag meant for another command is a mistake, not something to ignore.
  const bool joins = command == "find" || command == "create";
  if (error.empty() && !joins &&
      (!absl::GetFlag(FLAGS_queue).empty() || !absl::GetFlag(FLAGS_player).values.empty() ||
       !absl::GetFlag(FLAGS_attr).values.empty())) {
    error = absl::StrCat(command, " takes no --queue, --player or --attr");
  }
  if (error.empty() && command != "watch" && absl::GetFlag(FLAGS_after_seq) != 0) {
    error = absl::StrCat(command, " takes no --after_seq");
  }
  if (!error.empty()) return Usage(error);

  if (absl::GetFlag(FLAGS_server).empty()) return Usage("--server must name host:port");
  absl::Duration timeout = absl::GetFlag(FLAGS_timeout);
  if (timeout < absl::ZeroDuration()) return Usage("--timeout must be >= 0");
  if (timeout == absl::ZeroDuration() && command != "find" && command != "watch") {
    timeout = kDefaultUnaryTimeout;
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = Credentials();
  if (!credentials.ok()) return Usage(std::string(credentials.status().message()));
  auto stub =
      mm::Matchmaker::NewStub(grpc::CreateChannel(absl::GetFlag(FLAGS_server), *credentials));
  grpc::ClientContext ctx;
  if (timeout > absl::ZeroDuration() && timeout != absl::InfiniteDuration()) {
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
  watcher.Start(&ctx);

  grpc::Status status;
  if (command == "find") {
    std::string ticket_id;
    status = Stream(stub->FindMatch(&ctx, find), &ticket_id);
    if (watcher.interrupted() && !ticket_id.empty()) Withdraw(stub.get(), ticket_id);
  } else if (command == "watch") {
    mm::WatchTicketRequest request;
    request.set_ticket_id(args[0]);
    request.set_after_seq(absl::GetFlag(FLAGS_after_seq));
    std::string ticket_id;
    status = Stream(stub->WatchTicket(&ctx, request), &ticket_id);
  } else if (command == "queues") {
    mm::ListQueuesResponse response;
    status = stub->ListQueues(&ctx, mm::ListQueuesRequest(), &response);
    if (status.ok()) PrintQueues(response);
  } else {
    mm::Ticket ticket;
    if (command == "create") {
      status = stub->CreateTicket(&ctx, create, &ticket);
    } else if (command == "get") {
      mm::GetTicketRequest request;
      request.set_ticket_id(args[0]);
      status = stub->GetTicket(&ctx, request, &ticket);
    } else {
      mm::CancelTicketRequest request;
      request.set_ticket_id(args[0]);
      status = stub->CancelTicket(&ctx, request, &ticket);
    }
    if (status.ok()) PrintTicket(ticket);
  }
  return Done(status, &watcher);
}
