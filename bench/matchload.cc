// matchload: a bounded asynchronous load generator for matchmaking.v1.Matchmaker
// (matchd or bench/noop_server). See docs/PERFORMANCE.md.
//
//   matchload --target 127.0.0.1:PORT --server_pid PID [--mode stream|poll]
//             [--in_flight 256 | --rate R] [--duration 5s --warmup 1s]
//             [--hold N --hold_queue hold --hold_connections 4] [--wait 2s] [--json]
//
// One run:
//   1. Opens --connections channels (separate TCP connections).
//   2. With --hold N: opens N FindMatch streams in --hold_queue that never
//      match, waits until the server has them all (see --hold_ready) and
//      measures the server's RSS per held stream. They stay open until the end,
//      on the load's connections or (--hold_connections) on their own.
//   3. Generates tickets: closed loop (--in_flight tickets open; each finished
//      ticket is replaced) or open loop (--rate tickets/s). With --wait D the
//      tickets come in pairs made for each other, the second sent D after the
//      first. Each ticket is a FindMatch stream (--mode stream) or CreateTicket
//      then GetTicket every --poll_interval (--mode poll).
//   4. Measures over [warmup, warmup + duration): tickets that learned of their
//      match per second; server CPU (utime+stime of /proc/PID/stat) and client
//      CPU (getrusage) per such ticket; notify latency: for every member of a
//      match, the time its `matched` arrived minus the send time of the
//      match's last-sent member (the ticket that completed the match).
//   5. Cancels what is still open, closes the held streams, reports and exits:
//      0 on success; 1 if nothing matched, holds failed or more than
//      --max_error_ratio of the tickets ended in an error; 2 for bad flags;
//      3 if the run overran its hard cap (it then exits at once).
//
// Threads: --client_threads workers, each one completion queue and one
// thread; connection c belongs to worker c % client_threads. Every call object
// is owned by its worker: created, driven and freed on the worker's thread,
// with at most one operation in flight. The main thread only flips the run's
// phase and reads counters.
#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <queue>
#include <random>
#include <string>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "matchmaking/v1/matchmaking.grpc.pb.h"
#include "service/completion.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Server address (host:port).");
ABSL_FLAG(int, server_pid, 0, "Server process for CPU and RSS figures (/proc); 0: none.");
ABSL_FLAG(int, connections, 4, "Separate channels (TCP connections) to the server.");
ABSL_FLAG(int, client_threads, 1, "Worker threads, one completion queue each.");
ABSL_FLAG(std::string, mode, "stream",
          "stream: one FindMatch call per ticket; poll: CreateTicket, then GetTicket every "
          "--poll_interval until MATCHED.");
ABSL_FLAG(absl::Duration, poll_interval, absl::Milliseconds(100), "Poll mode: between polls.");
ABSL_FLAG(std::string, queue, "duel", "Queue of the measured tickets.");
ABSL_FLAG(int, in_flight, 256, "Closed loop (--rate 0): tickets kept open.");
ABSL_FLAG(double, rate, 0,
          "Open loop: tickets started per second (pairs at half this rate with --wait); "
          "0 means closed loop.");
ABSL_FLAG(int, max_in_flight, 200000,
          "Open loop: most tickets open at once; starts beyond it are dropped and counted "
          "(as are starts more than 10 ms behind schedule).");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(5), "Measured window.");
ABSL_FLAG(absl::Duration, warmup, absl::Seconds(1), "Load before the measured window.");
ABSL_FLAG(int64_t, tickets, 0, "Most tickets to start (0: no cap); the run ends when all ended.");
ABSL_FLAG(int, hold, 0, "FindMatch streams held open in --hold_queue during the run.");
ABSL_FLAG(std::string, hold_queue, "hold", "Queue of the held streams.");
ABSL_FLAG(int, hold_connections, 0,
          "Channels of their own for the held streams; 0: they share --connections with the "
          "measured load (whose client cost then grows with the streams held on them).");
ABSL_FLAG(std::string, hold_ready, "queued",
          "When a held stream counts as open on the server. queued: its first event arrived "
          "(matchd); barrier: the call started, and after all did, a ListQueues round trip on "
          "every connection came back (HTTP/2 keeps a connection's streams in order; for the "
          "no-op server, which sends nothing while waiting).");
ABSL_FLAG(absl::Duration, wait, absl::ZeroDuration(),
          "With --rate: tickets come in pairs made for each other, the second sent this long "
          "after the first (see --pair_by).");
ABSL_FLAG(std::string, pair_by, "rating",
          "How --wait pairs and held streams are kept apart. rating: a rating of their own "
          "(for a rated queue with window 0 in matchd); queue: a queue name of their own, "
          "QUEUE-RUN-N (for the no-op server, which pairs per queue name).");
ABSL_FLAG(int, party_size, 1, "Players per ticket.");
ABSL_FLAG(std::string, regions, "", "Comma-separated regions; each player gets a latency map.");
ABSL_FLAG(uint64_t, seed, 1, "Seed of ratings and latencies (N(1500, 300) ratings).");
ABSL_FLAG(double, max_error_ratio, 0.01, "Fail if more than this share of tickets errored.");
ABSL_FLAG(absl::Duration, hold_timeout, absl::Seconds(120), "Most time to open the holds.");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(10),
          "After the window: most time for open tickets to end once cancelled.");
ABSL_FLAG(std::string, label, "", "Free text echoed in the report.");
ABSL_FLAG(bool, json, false, "Print the report as one JSON object.");

namespace {

namespace mm = ::matchmaking::v1;
using Stub = mm::Matchmaker::Stub;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// ---------------------------------------------------------------------------
// /proc and getrusage readings.

// utime + stime of process `pid` in microseconds, or -1.
int64_t ProcessCpuMicros(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(in, line)) return -1;
  // Field 2 (comm) may contain spaces; the fields after it follow the last ')'.
  const size_t paren = line.rfind(')');
  if (paren == std::string::npos) return -1;
  std::vector<std::string> fields =
      absl::StrSplit(line.substr(paren + 2), ' ', absl::SkipEmpty());
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
  int64_t utime = 0, stime = 0;
  if (fields.size() < 13 || !absl::SimpleAtoi(fields[11], &utime) ||
      !absl::SimpleAtoi(fields[12], &stime)) {
    return -1;
  }
  static const int64_t ticks = sysconf(_SC_CLK_TCK);
  return (utime + stime) * 1'000'000 / ticks;
}

// VmRSS of `pid` ("self" allowed) in KiB, or -1.
int64_t ProcessRssKib(const std::string& pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) != 0) continue;
    std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
    int64_t kib = 0;
    if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &kib)) return kib;
  }
  return -1;
}

int64_t SelfCpuMicros() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1'000'000LL + usage.ru_utime.tv_usec +
         usage.ru_stime.tv_usec;
}

// ---------------------------------------------------------------------------
// Run-wide state.

// When each ticket's request was sent, by ticket number; written by the
// worker that sends it, read by whichever worker receives a match naming it.
// Chunks are allocated on first use and never move.
class SendTimes {
 public:
  SendTimes() {
    for (auto& c : chunks_) c.store(nullptr, std::memory_order_relaxed);
  }
  ~SendTimes() {
    for (auto& c : chunks_) delete[] c.load(std::memory_order_relaxed);
  }
  SendTimes(const SendTimes&) = delete;
  SendTimes& operator=(const SendTimes&) = delete;

  void Set(uint64_t n, int64_t ns) {
    std::atomic<int64_t>* chunk = Chunk(n, /*create=*/true);
    if (chunk != nullptr) chunk[n & kMask].store(ns, std::memory_order_release);
  }
  // 0 if unknown.
  int64_t Get(uint64_t n) {
    std::atomic<int64_t>* chunk = Chunk(n, /*create=*/false);
    return chunk == nullptr ? 0 : chunk[n & kMask].load(std::memory_order_acquire);
  }

 private:
  static constexpr int kChunkBits = 16;
  static constexpr uint64_t kMask = (uint64_t{1} << kChunkBits) - 1;
  static constexpr size_t kMaxChunks = 4096;  // 268M tickets

  std::atomic<int64_t>* Chunk(uint64_t n, bool create) {
    const uint64_t index = n >> kChunkBits;
    if (index >= kMaxChunks) return nullptr;
    std::atomic<int64_t>* chunk = chunks_[index].load(std::memory_order_acquire);
    if (chunk != nullptr || !create) return chunk;
    auto* fresh = new std::atomic<int64_t>[kMask + 1]();
    if (chunks_[index].compare_exchange_strong(chunk, fresh, std::memory_order_acq_rel)) {
      return fresh;
    }
    delete[] fresh;  // another worker won; `chunk` holds its array
    return chunk;
  }

  std::atomic<std::atomic<int64_t>*> chunks_[kMaxChunks];
};

// The run's phases, set by the main thread and followed by the workers.
enum Phase : int {
  kIdle,         // connected, nothing sent
  kHold,         // open the held streams
  kHoldBarrier,  // one ListQueues round trip per connection
  kLoad,         // generate the measured load
  kStop,         // cancel the load's open tickets
  kClose,        // close the held streams, then end
};

struct Config {
  bool poll = false;
  absl::Duration poll_interval;
  std::string queue;
  int in_flight = 0;
  double rate = 0;
  int max_in_flight = 0;
  int64_t ticket_cap = 0;
  int hold = 0;
  std::string hold_queue;
  bool hold_barrier = false;
  absl::Duration wait;
  bool pair_by_queue = false;
  int party_size = 1;
  std::vector<std::string> regions;
  uint64_t seed = 1;
  std::string run_id;  // player ids are p<run>-<n>[-<k>]
  double run_fraction = 0;  // in (0, 1), of --wait pair ratings
  int workers = 1;
};

struct Shared {
  Config config;
  std::atomic<int> phase{kIdle};
  // Set before phase becomes kLoad (the release store publishes them).
  int64_t load_start_ns = 0;
  int64_t window_start_ns = 0;
  int64_t window_end_ns = 0;
  std::atomic<uint64_t> next_ticket{0};
  std::atomic<int64_t> started{0};  // counts against --tickets
  SendTimes send_times;
};

// Per-worker results, read by the main thread after the worker joined.
struct Stats {
  int64_t started = 0;
  int64_t matched = 0;         // all matched tickets
  int64_t matched_window = 0;  // matched tickets whose `matched` arrived in the window
  int64_t rpcs_window = 0;     // calls started in the window (poll mode: creates + polls)
  int64_t aborted = 0;         // cancelled by us at the end of the run
  int64_t dropped = 0;         // open loop: starts skipped (--max_in_flight, or late)
  int64_t errors = 0;
  std::map<std::string, int64_t> errors_by_code;
  std::vector<int64_t> latencies_ns;  // notify latency of tickets matched in the window
  int64_t hold_errors = 0;
};

std::string CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK",      "CANCELLED",          "UNKNOWN",       "INVALID_ARGUMENT",  "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS",   "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",    "INTERNAL",
      "UNAVAILABLE", "DATA_LOSS",      "UNAUTHENTICATED"};
  const int c = static_cast<int>(code);
  return c >= 0 && c <= 16 ? kNames[c] : absl::StrCat("CODE_", c);
}

// The ticket number in a player id "p<run>-<n>" or "p<run>-<n>-<k>", or -1.
int64_t TicketNumberOf(absl::string_view player_id) {
  const size_t dash = player_id.find('-');
  if (dash == absl::string_view::npos) return -1;
  absl::string_view rest = player_id.substr(dash + 1);
  rest = rest.substr(0, rest.find('-'));
  uint64_t n = 0;
  return absl::SimpleAtoi(rest, &n) ? static_cast<int64_t>(n) : -1;
}

// ---------------------------------------------------------------------------
// Call state machines.

// Completion-queue tags: the same types as matchd's (service/completion.h).
using Tag = matchd::Completion;
template <typename T>
using MemberTag = matchd::MemberCompletion<T>;

class Worker;

// How a call ended.
enum class Outcome { kMatched, kAborted, kError };

// Base of the calls. A call is created and started by its worker, keeps at
// most one operation in flight, and reports its end to the worker exactly
// once, from the completion of its last operation; the worker then frees it.
class Call {
 public:
  explicit Call(Worker* worker) : worker_(worker) {}
  virtual ~Call() = default;
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

  // Asks the call to end early; its pending operation completes as usual.
  virtual void Cancel() = 0;

 protected:
  Worker* const worker_;
};

// The worker: one completion queue, its thread, its connections and calls.
class Worker {
 public:
  // `hold_stubs`: the held streams' own connections; empty: they use `stubs`.
  Worker(int index, Shared* shared, std::vector<Stub*> stubs, std::vector<Stub*> hold_stubs)
      : index_(index),
        shared_(shared),
        config_(shared->config),
        stubs_(std::move(stubs)),
        hold_stubs_(hold_stubs.empty() ? stubs_ : std::move(hold_stubs)),
        rng_(config_.seed * 7919 + index) {}

  void Start() { thread_ = std::thread([this] { Run(); }); }
  void Join() { thread_.join(); }

  grpc::CompletionQueue* cq() { return &cq_; }
  Stub* NextStub() { return stubs_[next_stub_++ % stubs_.size()]; }
  Stub* NextHoldStub() { return hold_stubs_[next_hold_stub_++ % hold_stubs_.size()]; }
  size_t hold_connections() const { return hold_stubs_.size(); }
  Stats& stats() { return stats_; }
  const Config& config() const { return config_; }

  // Progress, read by the main thread while the run goes on.
  std::atomic<int64_t> holds_ready{0};
  std::atomic<int64_t> holds_failed{0};
  std::atomic<int64_t> barrier_replies{0};
  std::atomic<int64_t> load_open{0};
  std::atomic<bool> cap_reached{false};

  // Called by the calls (worker thread).
  void OnMatched(const mm::Match& match, int64_t received_ns);
  void OnRpcStarted() {
    if (InWindow(NowNs())) ++stats_.rpcs_window;
  }
  void OnTicketEnded(Call* call, Outcome outcome, const grpc::Status& status);
  void OnHoldReady(Call* call);
  void OnHoldEnded(Call* call, const grpc::Status& status);
  void OnBarrierReply(Call* call, const grpc::Status& status);

 private:
  // The second ticket of a --wait pair, due at `due_ns`.
  struct PendingB {
    int64_t due_ns;
    int64_t pair;
    bool operator>(const PendingB& o) const { return due_ns > o.due_ns; }
  };

  void Run();
  void OnTick(bool ok);
  void ArmTicker();
  bool InWindow(int64_t ns) const {
    return ns >= shared_->window_start_ns && ns < shared_->window_end_ns;
  }
  // `current`: the main thread is in this phase (not past it).
  void EnterPhase(int phase, bool current);
  // Starts one load ticket; `pair` >= 0 for --wait pairs. False if the
  // --tickets cap is reached.
  bool LaunchTicket(int64_t pair);
  void Pace(int64_t now);
  void TopUpHolds();
  void OpenHold(int64_t i);
  void CountError(const grpc::Status& status);
  mm::Player* AddPlayer(google::protobuf::RepeatedPtrField<mm::Player>* players,
                        std::string id, double rating);

  const int index_;
  Shared* const shared_;
  const Config config_;
  std::vector<Stub*> stubs_;
  std::vector<Stub*> hold_stubs_;
  size_t next_hold_stub_ = 0;
  size_t next_stub_ = 0;
  std::mt19937_64 rng_;
  std::normal_distribution<double> rating_dist_{1500, 300};
  std::uniform_int_distribution<int> latency_dist_{10, 200};
  grpc::CompletionQueue cq_;
  std::thread thread_;
  Stats stats_;

  int phase_ = kIdle;  // as last seen
  grpc::Alarm ticker_;
  MemberTag<Worker> tick_tag_{this, &Worker::OnTick};

  std::unordered_set<Call*> load_calls_;
  std::unordered_set<Call*> hold_calls_;
  std::unordered_set<Call*> other_calls_;  // barrier round trips

  // Open loop.
  int64_t launched_ = 0;  // starts due so far (made or dropped)
  std::priority_queue<PendingB, std::vector<PendingB>, std::greater<PendingB>> pending_b_;
  std::uniform_real_distribution<double> wait_jitter_{0.75, 1.25};
  // Holds.
  int64_t holds_opened_ = 0;  // this worker's share opened so far
  int64_t hold_share_ = 0;
  int holds_pending_ = 0;  // opened, not yet ready or failed
};

// FindMatch for one load ticket: start -> read until `matched` -> finish.
class StreamTicket final : public Call {
 public:
  StreamTicket(Worker* worker, Stub* stub, const mm::FindMatchRequest& request)
      : Call(worker) {
    reader_ = stub->PrepareAsyncFindMatch(&ctx_, request, worker->cq());
    reader_->StartCall(&started_tag_);
  }
  void Cancel() override {
    cancelled_ = true;
    ctx_.TryCancel();
  }

 private:
  void OnStarted(bool ok) {
    if (!ok) return Finish();
    reader_->Read(&event_, &read_tag_);
  }
  void OnRead(bool ok) {
    if (!ok) return Finish();
    if (event_.has_matched()) {
      matched_ = true;
      worker_->OnMatched(event_.matched().match(), NowNs());
      return Finish();
    }
    reader_->Read(&event_, &read_tag_);  // `queued` or `searching`
  }
  void Finish() { reader_->Finish(&status_, &finished_tag_); }
  void OnFinished(bool /*ok*/) {
    Outcome outcome = Outcome::kError;
    if (matched_) {
      outcome = Outcome::kMatched;
    } else if (cancelled_) {
      outcome = Outcome::kAborted;
    } else if (status_.ok()) {
      status_ = grpc::Status(grpc::StatusCode::UNKNOWN, "stream ended OK without `matched`");
    }
    worker_->OnTicketEnded(this, outcome, status_);  // frees this
  }

  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientAsyncReader<mm::MatchEvent>> reader_;
  mm::MatchEvent event_;
  grpc::Status status_;
  bool matched_ = false;
  bool cancelled_ = false;
  MemberTag<StreamTicket> started_tag_{this, &StreamTicket::OnStarted};
  MemberTag<StreamTicket> read_tag_{this, &StreamTicket::OnRead};
  MemberTag<StreamTicket> finished_tag_{this, &StreamTicket::OnFinished};
};

// The polling way for one load ticket: CreateTicket -> (wait, GetTicket)* until
// MATCHED. Poll k is due k * --poll_interval after the CreateTicket was sent
// (a fixed schedule: slow replies or late timers do not stretch it). Each
// unary call gets a fresh context.
class PollTicket final : public Call {
 public:
  PollTicket(Worker* worker, Stub* stub, const mm::CreateTicketRequest& request)
      : Call(worker), stub_(stub), created_(std::chrono::system_clock::now()) {
    ctx_ = std::make_unique<grpc::ClientContext>();
    rpc_ = stub_->AsyncCreateTicket(ctx_.get(), request, worker->cq());
    rpc_->Finish(&ticket_, &status_, &replied_tag_);
    worker_->OnRpcStarted();
  }
  void Cancel() override {
    cancelled_ = true;
    if (alarm_set_) {
      alarm_.Cancel();
    } else {
      ctx_->TryCancel();
    }
  }

 private:
  void OnReplied(bool /*ok*/) {
    if (!status_.ok()) return End(cancelled_ ? Outcome::kAborted : Outcome::kError);
    if (ticket_.state() == mm::Ticket::MATCHED) {
      worker_->OnMatched(ticket_.match(), NowNs());
      return End(Outcome::kMatched);
    }
    if (ticket_.state() != mm::Ticket::QUEUED) {
      status_ = grpc::Status(grpc::StatusCode::UNKNOWN,
                             absl::StrCat("ticket ended ", mm::Ticket::State_Name(ticket_.state())));
      return End(Outcome::kError);
    }
    if (cancelled_) return End(Outcome::kAborted);
    if (ticket_id_.empty()) ticket_id_ = ticket_.ticket_id();
    ++polls_;
    alarm_set_ = true;
    alarm_.Set(worker_->cq(),
               created_ + polls_ * absl::ToChronoNanoseconds(worker_->config().poll_interval),
               &poll_due_tag_);
  }
  void OnPollDue(bool ok) {
    alarm_set_ = false;
    if (!ok || cancelled_) return End(Outcome::kAborted);
    rpc_.reset();  // lives in the old context's call arena: drop it first
    ctx_ = std::make_unique<grpc::ClientContext>();
    mm::GetTicketRequest request;
    request.set_ticket_id(ticket_id_);
    rpc_ = stub_->AsyncGetTicket(ctx_.get(), request, worker_->cq());
    rpc_->Finish(&ticket_, &status_, &replied_tag_);
    worker_->OnRpcStarted();
  }
  void End(Outcome outcome) { worker_->OnTicketEnded(this, outcome, status_); }

  Stub* const stub_;
  const std::chrono::system_clock::time_point created_;
  int64_t polls_ = 0;  // scheduled so far
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<grpc::ClientAsyncResponseReader<mm::Ticket>> rpc_;
  mm::Ticket ticket_;
  grpc::Status status_;
  std::string ticket_id_;
  grpc::Alarm alarm_;
  bool alarm_set_ = false;
  bool cancelled_ = false;
  MemberTag<PollTicket> replied_tag_{this, &PollTicket::OnReplied};
  MemberTag<PollTicket> poll_due_tag_{this, &PollTicket::OnPollDue};
};

// A held FindMatch stream: start -> (queued mode) read the first event ->
// idle, no operation in flight, until the worker frees it (which cancels the
// call) at the end of the run.
class HoldStream final : public Call {
 public:
  HoldStream(Worker* worker, Stub* stub, const mm::FindMatchRequest& request, bool barrier)
      : Call(worker), barrier_(barrier) {
    reader_ = stub->PrepareAsyncFindMatch(&ctx_, request, worker->cq());
    reader_->StartCall(&started_tag_);
  }
  // Open on the server with no operation in flight: freeing it cancels it.
  bool idle() const { return idle_; }
  void Cancel() override { ctx_.TryCancel(); }

 private:
  void OnStarted(bool ok) {
    if (!ok) return Finish();
    if (barrier_) return Ready();
    reader_->Read(&event_, &read_tag_);
  }
  void OnRead(bool ok) {
    if (!ok) return Finish();
    if (event_.has_matched()) {  // held streams must never match
      failed_ = grpc::Status(grpc::StatusCode::INTERNAL, "a held stream was matched");
      return Finish();
    }
    Ready();
  }
  void Ready() {
    idle_ = true;
    worker_->OnHoldReady(this);  // may free this
  }
  void Finish() { reader_->Finish(&status_, &finished_tag_); }
  void OnFinished(bool /*ok*/) {
    worker_->OnHoldEnded(this, failed_.ok() ? status_ : failed_);
  }

  const bool barrier_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientAsyncReader<mm::MatchEvent>> reader_;
  mm::MatchEvent event_;
  grpc::Status status_;
  grpc::Status failed_;
  bool idle_ = false;
  MemberTag<HoldStream> started_tag_{this, &HoldStream::OnStarted};
  MemberTag<HoldStream> read_tag_{this, &HoldStream::OnRead};
  MemberTag<HoldStream> finished_tag_{this, &HoldStream::OnFinished};
};

// One ListQueues round trip (the hold barrier).
class BarrierCall final : public Call {
 public:
  BarrierCall(Worker* worker, Stub* stub) : Call(worker) {
    rpc_ = stub->AsyncListQueues(&ctx_, mm::ListQueuesRequest(), worker->cq());
    rpc_->Finish(&response_, &status_, &done_tag_);
  }
  void Cancel() override { ctx_.TryCancel(); }

 private:
  void OnDone(bool /*ok*/) { worker_->OnBarrierReply(this, status_); }

  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientAsyncResponseReader<mm::ListQueuesResponse>> rpc_;
  mm::ListQueuesResponse response_;
  grpc::Status status_;
  MemberTag<BarrierCall> done_tag_{this, &BarrierCall::OnDone};
};

// ---------------------------------------------------------------------------
// Worker.

void Worker::Run() {
  ArmTicker();
  void* tag = nullptr;
  bool ok = false;
  while (cq_.Next(&tag, &ok)) static_cast<Tag*>(tag)->OnComplete(ok);
}

void Worker::ArmTicker() {
  // 1 ms while pacing an open loop, otherwise just often enough to follow
  // the phase promptly.
  const bool pacing = phase_ == kLoad && config_.rate > 0;
  const auto period = pacing ? std::chrono::milliseconds(1) : std::chrono::milliseconds(5);
  ticker_.Set(&cq_, std::chrono::system_clock::now() + period, &tick_tag_);
}

void Worker::OnTick(bool /*ok*/) {  // the ticker is never cancelled
  const int phase = shared_->phase.load(std::memory_order_acquire);
  // Phases the main thread skipped (e.g. no holds, or a failed hold) do
  // nothing; kStop and kClose always clean up.
  while (phase_ < phase) EnterPhase(phase_ + 1, /*current=*/phase_ + 1 == phase);
  if (phase_ == kLoad && config_.rate > 0) Pace(NowNs());
  if (phase_ == kClose && load_calls_.empty() && hold_calls_.empty() && other_calls_.empty()) {
    cq_.Shutdown();  // nothing outstanding: Next() returns false once drained
    return;
  }
  ArmTicker();
}

void Worker::EnterPhase(int phase, bool current) {
  phase_ = phase;
  if (!current && phase < kStop) return;
  switch (phase) {
    case kHold: {
      // Hold i goes to worker i % workers.
      const int64_t n = config_.hold;
      hold_share_ = n / config_.workers + (index_ < n % config_.workers ? 1 : 0);
      TopUpHolds();
      break;
    }
    case kHoldBarrier:
      if (!config_.hold_barrier) break;
      for (Stub* stub : hold_stubs_) {
        auto* call = new BarrierCall(this, stub);
        other_calls_.insert(call);
      }
      break;
    case kLoad:
      if (config_.rate <= 0) {
        // Closed loop: this worker's share of --in_flight.
        const int share =
            config_.in_flight / config_.workers + (index_ < config_.in_flight % config_.workers);
        for (int i = 0; i < share; ++i) {
          if (!LaunchTicket(-1)) break;
        }
      }
      break;
    case kStop: {
      pending_b_ = {};
      std::vector<Call*> open(load_calls_.begin(), load_calls_.end());
      for (Call* call : open) call->Cancel();
      break;
    }
    case kClose: {
      // Freeing an idle held stream cancels its call; the others (still
      // opening) are cancelled and end through their pending operation.
      std::vector<Call*> holds(hold_calls_.begin(), hold_calls_.end());
      for (Call* call : holds) {
        auto* hold = static_cast<HoldStream*>(call);
        if (hold->idle()) {
          hold_calls_.erase(call);
          delete hold;
        } else {
          hold->Cancel();
        }
      }
      for (Call* call : other_calls_) call->Cancel();
      break;
    }
    default:
      break;
  }
}

mm::Player* Worker::AddPlayer(google::protobuf::RepeatedPtrField<mm::Player>* players,
                              std::string id, double rating) {
  mm::Player* p = players->Add();
  p->set_id(std::move(id));
  p->set_rating(rating);
  for (const std::string& region : config_.regions) {
    (*p->mutable_latency_ms())[region] = latency_dist_(rng_);
  }
  return p;
}

bool Worker::LaunchTicket(int64_t pair) {
  if (config_.ticket_cap > 0 &&
      shared_->started.fetch_add(1, std::memory_order_relaxed) >= config_.ticket_cap) {
    cap_reached.store(true, std::memory_order_relaxed);
    return false;
  }
  const uint64_t n = shared_->next_ticket.fetch_add(1, std::memory_order_relaxed);
  std::string queue = config_.queue;
  google::protobuf::RepeatedPtrField<mm::Player> players;
  for (int k = 0; k < config_.party_size; ++k) {
    std::string id = config_.party_size == 1 ? absl::StrCat("p", config_.run_id, "-", n)
                                             : absl::StrCat("p", config_.run_id, "-", n, "-", k);
    double rating = std::clamp(rating_dist_(rng_), 0.0, 4000.0);
    if (pair >= 0 && !config_.pair_by_queue) {
      // A rating of the pair's own; exact, so a window of 0 accepts it. The
      // run's fraction keeps it apart from tickets a previous run left.
      rating = static_cast<double>(pair % 199999) - 99999 + config_.run_fraction;
    }
    AddPlayer(&players, std::move(id), rating);
  }
  if (pair >= 0 && config_.pair_by_queue) absl::StrAppend(&queue, "-", config_.run_id, "-", pair);

  shared_->send_times.Set(n, NowNs());
  Call* call;
  if (config_.poll) {
    mm::CreateTicketRequest request;
    request.set_queue(std::move(queue));
    *request.mutable_players() = std::move(players);
    call = new PollTicket(this, NextStub(), request);
  } else {
    mm::FindMatchRequest request;
    request.set_queue(std::move(queue));
    *request.mutable_players() = std::move(players);
    call = new StreamTicket(this, NextStub(), request);
    OnRpcStarted();
  }
  load_calls_.insert(call);
  load_open.fetch_add(1, std::memory_order_relaxed);
  ++stats_.started;
  return true;
}

void Worker::Pace(int64_t now) {
  if (cap_reached.load(std::memory_order_relaxed)) return;
  const double per_worker = config_.rate / config_.workers;
  const double elapsed_s = (now - shared_->load_start_ns) / 1e9;
  if (config_.wait <= absl::ZeroDuration()) {
    const int64_t due = static_cast<int64_t>(per_worker * elapsed_s);
    // Behind schedule (the machine held this thread up, or the rate is more
    // than it can start), the loop does not catch up in one burst: starting
    // thousands of calls in one tick starves the completions this thread also
    // handles, calls pile up and each costs more, and the run can tip into a
    // collapse in which nothing completes. Starts more than kMaxLag late are
    // dropped and counted instead.
    constexpr double kMaxLagSeconds = 0.010;
    const int64_t max_backlog = std::max<int64_t>(1, per_worker * kMaxLagSeconds);
    if (due - launched_ > max_backlog) {
      stats_.dropped += due - launched_ - max_backlog;
      launched_ = due - max_backlog;
    }
    for (; launched_ < due; ++launched_) {
      if (static_cast<int>(load_calls_.size()) >= config_.max_in_flight) {
        ++stats_.dropped;
        continue;
      }
      if (!LaunchTicket(-1)) return;
    }
    return;
  }
  // Pairs at half the ticket rate; the second of each about `wait` after the
  // first: uniform in [0.75, 1.25] * wait, so that the second does not arrive
  // in step with the first one's polls (poll k is due at k * interval).
  const double pair_rate = per_worker / 2;
  const double wait_ns = absl::ToDoubleNanoseconds(config_.wait);
  const int64_t due = static_cast<int64_t>(pair_rate * elapsed_s);
  for (; launched_ < due; ++launched_) {
    const int64_t pair = launched_ * config_.workers + index_;  // unique across workers
    const int64_t first_ns =
        shared_->load_start_ns + static_cast<int64_t>(launched_ / pair_rate * 1e9);
    if (static_cast<int>(load_calls_.size()) >= config_.max_in_flight) {
      stats_.dropped += 2;
      continue;
    }
    if (!LaunchTicket(pair)) return;
    pending_b_.push({first_ns + static_cast<int64_t>(wait_ns * wait_jitter_(rng_)), pair});
  }
  while (!pending_b_.empty() && pending_b_.top().due_ns <= now) {
    const int64_t pair = pending_b_.top().pair;
    pending_b_.pop();
    if (!LaunchTicket(pair)) return;
  }
}

void Worker::OnMatched(const mm::Match& match, int64_t received_ns) {
  ++stats_.matched;
  if (!InWindow(received_ns)) return;
  ++stats_.matched_window;
  // The completing ticket: the member sent last.
  int64_t completing_ns = 0;
  for (const mm::Team& team : match.teams()) {
    for (const mm::Player& player : team.players()) {
      const int64_t n = TicketNumberOf(player.id());
      const int64_t sent = n < 0 ? 0 : shared_->send_times.Get(static_cast<uint64_t>(n));
      if (sent == 0) return;  // not one of ours: no latency sample
      completing_ns = std::max(completing_ns, sent);
    }
  }
  stats_.latencies_ns.push_back(received_ns - completing_ns);
}

void Worker::CountError(const grpc::Status& status) {
  ++stats_.errors;
  ++stats_.errors_by_code[CodeName(status.error_code())];
  if (stats_.errors <= 3) {
    std::cerr << "matchload: ticket error " << CodeName(status.error_code()) << ": "
              << status.error_message() << std::endl;
  }
}

void Worker::OnTicketEnded(Call* call, Outcome outcome, const grpc::Status& status) {
  load_calls_.erase(call);
  delete call;
  load_open.fetch_sub(1, std::memory_order_relaxed);
  if (outcome == Outcome::kAborted) ++stats_.aborted;
  if (outcome == Outcome::kError) CountError(status);
  // Closed loop: replace the ticket.
  if (phase_ == kLoad && config_.rate <= 0) LaunchTicket(-1);
}

void Worker::TopUpHolds() {
  // At most kWindow opening at once keeps the completion queue short (in a
  // gRPC built without NDEBUG each completion scans the outstanding tags).
  constexpr int kWindow = 500;
  while (phase_ == kHold && holds_opened_ < hold_share_ && holds_pending_ < kWindow) {
    OpenHold(holds_opened_ * config_.workers + index_);
    ++holds_opened_;
  }
}

void Worker::OpenHold(int64_t i) {
  mm::FindMatchRequest request;
  std::string queue = config_.hold_queue;
  double rating;
  if (config_.pair_by_queue) {
    absl::StrAppend(&queue, "-", config_.run_id, "-", i);
    rating = 1500;
  } else {
    // Distinct ratings in [-100000, 100000): no group of them spans 0.
    rating = -100000 + static_cast<double>(i) * (200000.0 / std::max(config_.hold, 1));
  }
  request.set_queue(std::move(queue));
  AddPlayer(request.mutable_players(), absl::StrCat("h", config_.run_id, "-", i), rating);
  auto* hold = new HoldStream(this, NextHoldStub(), request, config_.hold_barrier);
  hold_calls_.insert(hold);
  ++holds_pending_;
}

void Worker::OnHoldReady(Call* call) {
  if (phase_ >= kClose) {  // became ready while being cancelled: close it now
    hold_calls_.erase(call);
    delete call;
    return;
  }
  --holds_pending_;
  holds_ready.fetch_add(1, std::memory_order_relaxed);
  TopUpHolds();
}

void Worker::OnHoldEnded(Call* call, const grpc::Status& status) {
  auto* hold = static_cast<HoldStream*>(call);
  const bool was_pending = !hold->idle();
  hold_calls_.erase(call);
  delete hold;
  if (phase_ >= kClose) return;  // we cancelled it
  if (was_pending) --holds_pending_;
  ++stats_.hold_errors;
  holds_failed.fetch_add(1, std::memory_order_relaxed);
  CountError(status);
}

void Worker::OnBarrierReply(Call* call, const grpc::Status& status) {
  other_calls_.erase(call);
  delete call;
  if (!status.ok()) {
    CountError(status);
    holds_failed.fetch_add(1, std::memory_order_relaxed);
  }
  barrier_replies.fetch_add(1, std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------
// Main thread.

// Ends the process if the run overruns its hard cap.
class Watchdog {
 public:
  explicit Watchdog(absl::Duration cap) {
    thread_ = std::thread([this, cap] {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, absl::ToChronoNanoseconds(cap), [this] { return done_; })) {
        std::cerr << "matchload: the run overran its hard cap of " << absl::FormatDuration(cap)
                  << "; exiting" << std::endl;
        std::_Exit(3);
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

void SleepUntilNs(int64_t ns) {
  const int64_t now = NowNs();
  if (ns > now) std::this_thread::sleep_for(std::chrono::nanoseconds(ns - now));
}

// Polls `done` every 10 ms until it holds or `timeout` passes.
template <typename F>
bool WaitFor(F done, absl::Duration timeout) {
  const int64_t deadline = NowNs() + absl::ToInt64Nanoseconds(timeout);
  while (!done()) {
    if (NowNs() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// The server's RSS once it stops moving (two readings 200 ms apart within
// 0.5 %), at most ~5 s.
int64_t SettledRssKib(int pid) {
  int64_t last = ProcessRssKib(std::to_string(pid));
  for (int i = 0; i < 25; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const int64_t now = ProcessRssKib(std::to_string(pid));
    if (std::llabs(now - last) * 200 <= last) return now;
    last = now;
  }
  return last;
}

double Percentile(const std::vector<int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t i = std::min(sorted.size() - 1, static_cast<size_t>(p * sorted.size()));
  return sorted[i] / 1e6;  // ms
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppendFormat(&out, "\\u%04x", c);
      continue;
    }
    out += c;
  }
  return out + "\"";
}

int Fail(const std::string& message) {
  std::cerr << "matchload: " << message << std::endl;
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "matchload: bounded load generator for matchmaking.v1.Matchmaker. Flags: --helpfull.");
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    return Fail(absl::StrCat("unexpected argument \"", positional[1], "\"; matchload takes flags only"));
  }
  // As in matchd: Debian's abseil leaves absl::Mutex deadlock detection on,
  // and its graph slows every lock as tens of thousands of calls are open.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  Shared shared;
  Config& c = shared.config;
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode != "stream" && mode != "poll") return Fail("--mode must be stream or poll");
  c.poll = mode == "poll";
  c.poll_interval = absl::GetFlag(FLAGS_poll_interval);
  c.queue = absl::GetFlag(FLAGS_queue);
  c.in_flight = absl::GetFlag(FLAGS_in_flight);
  c.rate = absl::GetFlag(FLAGS_rate);
  c.max_in_flight = absl::GetFlag(FLAGS_max_in_flight);
  c.ticket_cap = absl::GetFlag(FLAGS_tickets);
  c.hold = absl::GetFlag(FLAGS_hold);
  c.hold_queue = absl::GetFlag(FLAGS_hold_queue);
  const std::string hold_ready = absl::GetFlag(FLAGS_hold_ready);
  if (hold_ready != "queued" && hold_ready != "barrier") {
    return Fail("--hold_ready must be queued or barrier");
  }
  c.hold_barrier = hold_ready == "barrier";
  c.wait = absl::GetFlag(FLAGS_wait);
  const std::string pair_by = absl::GetFlag(FLAGS_pair_by);
  if (pair_by != "rating" && pair_by != "queue") return Fail("--pair_by must be rating or queue");
  c.pair_by_queue = pair_by == "queue";
  c.party_size = absl::GetFlag(FLAGS_party_size);
  for (absl::string_view r : absl::StrSplit(absl::GetFlag(FLAGS_regions), ',', absl::SkipEmpty())) {
    c.regions.emplace_back(r);
  }
  c.seed = absl::GetFlag(FLAGS_seed);
  const int connections = absl::GetFlag(FLAGS_connections);
  c.workers = absl::GetFlag(FLAGS_client_threads);
  const int server_pid = absl::GetFlag(FLAGS_server_pid);
  const absl::Duration duration = absl::GetFlag(FLAGS_duration);
  const absl::Duration warmup = absl::GetFlag(FLAGS_warmup);
  const absl::Duration hold_timeout = absl::GetFlag(FLAGS_hold_timeout);
  const absl::Duration drain_timeout = absl::GetFlag(FLAGS_drain_timeout);

  if (c.workers < 1) return Fail("--client_threads must be >= 1");
  if (connections < c.workers) return Fail("--connections must be >= --client_threads");
  // Above 10M/s the pacing's backlog alone (10 ms of starts) would not fit in memory.
  if (!(c.rate >= 0 && c.rate <= 1e7)) return Fail("--rate must be in [0, 1e7]");
  if (c.max_in_flight < 1) return Fail("--max_in_flight must be >= 1");
  if (absl::GetFlag(FLAGS_tickets) < 0) return Fail("--tickets must be >= 0 (0: no cap)");
  const double max_error_ratio = absl::GetFlag(FLAGS_max_error_ratio);
  if (!(max_error_ratio >= 0 && max_error_ratio <= 1)) {
    return Fail("--max_error_ratio must be in [0, 1]");
  }
  if (hold_timeout < absl::ZeroDuration() || drain_timeout < absl::ZeroDuration()) {
    return Fail("--hold_timeout and --drain_timeout must be >= 0");
  }
  if (c.rate == 0 && c.in_flight < 1) return Fail("--in_flight must be >= 1");
  if (c.wait > absl::ZeroDuration() && c.rate == 0) return Fail("--wait needs --rate");
  if (c.party_size < 1) return Fail("--party_size must be >= 1");
  if (c.hold < 0) return Fail("--hold must be >= 0");
  if (duration <= absl::ZeroDuration() || warmup < absl::ZeroDuration()) {
    return Fail("--duration must be > 0 and --warmup >= 0");
  }
  if (c.poll && c.poll_interval <= absl::ZeroDuration()) return Fail("--poll_interval must be > 0");
  if (server_pid != 0 && ProcessCpuMicros(server_pid) < 0) {
    return Fail(absl::StrCat("cannot read /proc/", server_pid, "/stat"));
  }
  {
    std::mt19937_64 r(std::random_device{}());
    c.run_id = absl::StrFormat("%08x", static_cast<uint32_t>(r()));
    c.run_fraction = std::uniform_real_distribution<double>(0.01, 0.99)(r);
  }
  Watchdog watchdog(absl::Seconds(10) + hold_timeout + warmup + duration + drain_timeout +
                    absl::Seconds(30));

  // Connections: a local subchannel pool and a distinct argument per channel
  // so that no two channels share a TCP connection.
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<Stub>> stubs;  // the load's, then the holds' own
  const int hold_connections = c.hold > 0 ? absl::GetFlag(FLAGS_hold_connections) : 0;
  if (hold_connections < 0) return Fail("--hold_connections must be >= 0");
  for (int i = 0; i < connections + hold_connections; ++i) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt("matchload.connection", i);
    channels.push_back(grpc::CreateCustomChannel(absl::GetFlag(FLAGS_target),
                                                 grpc::InsecureChannelCredentials(), args));
    if (!channels.back()->WaitForConnected(std::chrono::system_clock::now() +
                                           std::chrono::seconds(10))) {
      std::cerr << "matchload: cannot connect to " << absl::GetFlag(FLAGS_target) << std::endl;
      return 1;
    }
    stubs.push_back(mm::Matchmaker::NewStub(channels.back()));
  }
  std::vector<std::unique_ptr<Worker>> workers;
  for (int w = 0; w < c.workers; ++w) {
    std::vector<Stub*> mine;
    for (int i = w; i < connections; i += c.workers) mine.push_back(stubs[i].get());
    std::vector<Stub*> mine_for_holds;
    for (int i = w; i < hold_connections; i += c.workers) {
      mine_for_holds.push_back(stubs[connections + i].get());
    }
    workers.push_back(
        std::make_unique<Worker>(w, &shared, std::move(mine), std::move(mine_for_holds)));
  }
  for (auto& w : workers) w->Start();
  auto sum = [&workers](std::atomic<int64_t> Worker::*counter) {
    int64_t total = 0;
    for (auto& w : workers) total += ((*w).*counter).load(std::memory_order_relaxed);
    return total;
  };

  // Holds.
  bool failed = false;
  std::string failure;
  int64_t rss_before = -1, rss_after = -1, client_rss_before = -1, client_rss_after = -1;
  double hold_open_s = 0;
  if (c.hold > 0) {
    rss_before = server_pid ? ProcessRssKib(std::to_string(server_pid)) : -1;
    client_rss_before = ProcessRssKib("self");
    const int64_t t0 = NowNs();
    shared.phase.store(kHold, std::memory_order_release);
    const bool opened = WaitFor(
        [&] {
          return sum(&Worker::holds_ready) >= c.hold || sum(&Worker::holds_failed) > 0;
        },
        hold_timeout);
    if (!opened || sum(&Worker::holds_failed) > 0) {
      failed = true;
      failure = absl::StrCat("holds: ", sum(&Worker::holds_ready), " of ", c.hold, " open, ",
                             sum(&Worker::holds_failed), " failed");
    } else if (c.hold_barrier) {
      shared.phase.store(kHoldBarrier, std::memory_order_release);
      // One round trip per connection that carries held streams.
      int barrier_calls = 0;
      for (auto& w : workers) barrier_calls += static_cast<int>(w->hold_connections());
      if (!WaitFor([&] { return sum(&Worker::barrier_replies) >= barrier_calls; },
                   absl::Seconds(30))) {
        failed = true;
        failure = "hold barrier: ListQueues round trips did not come back";
      }
    }
    hold_open_s = (NowNs() - t0) / 1e9;
    if (!failed && server_pid) rss_after = SettledRssKib(server_pid);
    client_rss_after = ProcessRssKib("self");
  }

  // The measured load.
  int64_t server_cpu0 = 0, server_cpu1 = 0, client_cpu0 = 0, client_cpu1 = 0;
  double window_s = 0;
  if (!failed) {
    shared.load_start_ns = NowNs();
    shared.window_start_ns = shared.load_start_ns + absl::ToInt64Nanoseconds(warmup);
    shared.window_end_ns = shared.window_start_ns + absl::ToInt64Nanoseconds(duration);
    shared.phase.store(kLoad, std::memory_order_release);
    SleepUntilNs(shared.window_start_ns);
    server_cpu0 = server_pid ? ProcessCpuMicros(server_pid) : 0;
    client_cpu0 = SelfCpuMicros();
    const int64_t t0 = NowNs();
    // Until the window ends, or every capped ticket has ended.
    while (NowNs() < shared.window_end_ns) {
      bool capped = c.ticket_cap > 0;
      for (auto& w : workers) capped = capped && w->cap_reached.load();
      if (capped && sum(&Worker::load_open) == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min<int64_t>(
          10, std::max<int64_t>(1, (shared.window_end_ns - NowNs()) / 1'000'000))));
    }
    server_cpu1 = server_pid ? ProcessCpuMicros(server_pid) : 0;
    client_cpu1 = SelfCpuMicros();
    window_s = (NowNs() - t0) / 1e9;
  }
  shared.phase.store(kStop, std::memory_order_release);
  if (!WaitFor([&] { return sum(&Worker::load_open) == 0; }, drain_timeout)) {
    failed = true;
    failure = absl::StrCat(sum(&Worker::load_open), " tickets still open ",
                           absl::FormatDuration(drain_timeout), " after they were cancelled");
  }
  shared.phase.store(kClose, std::memory_order_release);
  for (auto& w : workers) w->Join();

  // Report.
  Stats total;
  for (auto& w : workers) {
    Stats& s = w->stats();
    total.started += s.started;
    total.matched += s.matched;
    total.matched_window += s.matched_window;
    total.rpcs_window += s.rpcs_window;
    total.aborted += s.aborted;
    total.dropped += s.dropped;
    total.errors += s.errors;
    total.hold_errors += s.hold_errors;
    for (const auto& [code, n] : s.errors_by_code) total.errors_by_code[code] += n;
    total.latencies_ns.insert(total.latencies_ns.end(), s.latencies_ns.begin(),
                              s.latencies_ns.end());
  }
  std::sort(total.latencies_ns.begin(), total.latencies_ns.end());
  const double matched = static_cast<double>(total.matched_window);
  const double tickets_per_s = window_s > 0 ? matched / window_s : 0;
  const double server_us = server_pid && matched > 0 ? (server_cpu1 - server_cpu0) / matched : -1;
  const double client_us = matched > 0 ? (client_cpu1 - client_cpu0) / matched : -1;
  const double server_cores = window_s > 0 ? (server_cpu1 - server_cpu0) / 1e6 / window_s : 0;
  const double client_cores = window_s > 0 ? (client_cpu1 - client_cpu0) / 1e6 / window_s : 0;
  const double rss_per_hold =
      rss_before >= 0 && rss_after >= 0 && c.hold > 0 ? (rss_after - rss_before) * 1.0 / c.hold
                                                      : -1;
  const double client_rss_per_hold =
      c.hold > 0 ? (client_rss_after - client_rss_before) * 1.0 / c.hold : -1;
  const double rpcs_per_ticket = matched > 0 ? total.rpcs_window / matched : 0;
  const double p50 = Percentile(total.latencies_ns, 0.50);
  const double p99 = Percentile(total.latencies_ns, 0.99);
  const double max = total.latencies_ns.empty() ? 0 : total.latencies_ns.back() / 1e6;

  const int64_t ended = total.matched + total.errors;
  if (!failed && total.matched_window == 0) {
    failed = true;
    failure = "no ticket matched in the measured window";
  }
  if (!failed && ended > 0 &&
      total.errors > absl::GetFlag(FLAGS_max_error_ratio) * static_cast<double>(ended)) {
    failed = true;
    failure = absl::StrCat(total.errors, " of ", ended, " tickets ended in an error");
  }
  std::vector<std::string> errors;
  for (const auto& [code, n] : total.errors_by_code) errors.push_back(absl::StrCat(code, "=", n));

  if (absl::GetFlag(FLAGS_json)) {
    std::string err_json;
    for (const auto& [code, n] : total.errors_by_code) {
      absl::StrAppend(&err_json, err_json.empty() ? "" : ",", JsonString(code), ":", n);
    }
    std::cout << absl::StrFormat(
                     "{\"label\":%s,\"mode\":%s,\"queue\":%s,\"rate\":%g,\"in_flight\":%d,"
                     "\"connections\":%d,\"hold\":%d,\"wait_s\":%g,\"poll_interval_s\":%g,"
                     "\"window_s\":%.3f,\"matched\":%d,\"tickets_per_s\":%.1f,"
                     "\"server_us_per_ticket\":%.2f,\"client_us_per_ticket\":%.2f,"
                     "\"server_cores\":%.3f,\"client_cores\":%.3f,\"rpcs_per_ticket\":%.2f,"
                     "\"latency_ms\":{\"p50\":%.3f,\"p99\":%.3f,\"max\":%.3f,\"samples\":%d},"
                     "\"hold_open_s\":%.2f,\"server_rss_kib_per_hold\":%.3f,"
                     "\"client_rss_kib_per_hold\":%.3f,\"started\":%d,\"aborted\":%d,"
                     "\"dropped\":%d,\"errors\":%d,\"errors_by_code\":{%s},\"ok\":%s,"
                     "\"failure\":%s}",
                     JsonString(absl::GetFlag(FLAGS_label)), JsonString(mode),
                     JsonString(c.queue), c.rate, c.in_flight, connections, c.hold,
                     absl::ToDoubleSeconds(c.wait),
                     c.poll ? absl::ToDoubleSeconds(c.poll_interval) : 0.0, window_s,
                     total.matched_window, tickets_per_s, server_us, client_us, server_cores,
                     client_cores, rpcs_per_ticket, p50, p99, max, total.latencies_ns.size(),
                     hold_open_s, rss_per_hold, client_rss_per_hold, total.started,
                     total.aborted, total.dropped, total.errors, err_json,
                     failed ? "false" : "true", JsonString(failure))
              << std::endl;
  } else {
    std::cout << absl::StrFormat(
        "%s%s %s, %d connections, %s\n"
        "  matched %d tickets in %.2f s: %.0f tickets/s\n"
        "  server CPU %.2f us/ticket (%.2f cores), client CPU %.2f us/ticket (%.2f cores)\n"
        "  rpcs/ticket %.2f; notify latency p50 %.3f ms, p99 %.3f ms, max %.3f ms\n",
        absl::GetFlag(FLAGS_label).empty() ? "" : absl::GetFlag(FLAGS_label) + ": ", mode,
        c.queue, connections,
        c.rate > 0 ? absl::StrFormat("%.0f tickets/s offered", c.rate)
                   : absl::StrFormat("%d in flight", c.in_flight),
        total.matched_window, window_s, tickets_per_s, server_us, server_cores, client_us,
        client_cores, rpcs_per_ticket, p50, p99, max);
    if (c.hold > 0) {
      std::cout << absl::StrFormat(
          "  held %d streams (opened in %.1f s): server RSS %.2f KiB/stream, client %.2f\n",
          c.hold, hold_open_s, rss_per_hold, client_rss_per_hold);
    }
    std::cout << absl::StrFormat("  started %d, aborted at stop %d, dropped %d, errors %d %s\n",
                                 total.started, total.aborted, total.dropped, total.errors,
                                 absl::StrJoin(errors, " "));
  }
  if (failed) {
    std::cerr << "matchload: FAILED: " << failure << std::endl;
    return 1;
  }
  return 0;
}
