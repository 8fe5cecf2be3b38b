// One queue at run time: its matcher pool, its tickets and the players they
// hold, and the timers that drive them. Owned by exactly one event loop:
// every method except the counters runs on that loop, so the hot path takes
// no lock. Other loops reach it by posting to loop().
#ifndef MATCHD_SERVICE_QUEUE_RUNTIME_H_
#define MATCHD_SERVICE_QUEUE_RUNTIME_H_

#include <atomic>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/types/span.h"
#include "matcher/pool.h"
#include "matchmaking/v1/matchmaking.pb.h"
#include "service/config.h"
#include "service/event_loop.h"
#include "service/events.h"
#include "service/runtime.h"

namespace matchd {

// Each team's predicted chance to win from its mean rating, Elo scale:
// p_i = 10^(r_i/400) / sum_j 10^(r_j/400). Non-empty input. Inline storage:
// one per match, without an allocation for up to four teams.
using TeamValues = absl::InlinedVector<double, 4>;
TeamValues WinProbabilities(absl::Span<const double> team_ratings);

// Why a stream left its ticket.
enum class DetachReason {
  kCallEnded,       // the caller cancelled or the connection died
  kCallerDeadline,  // the caller's deadline passed
};

class QueueRuntime final : private matcher::PoolListener {
 public:
  QueueRuntime(int index, QueueSettings settings, Runtime* runtime, EventLoop* loop);
  ~QueueRuntime() override;

  const QueueSettings& settings() const { return settings_; }
  EventLoop* loop() const { return loop_; }
  int index() const { return index_; }

  // Loop-thread only. The party has been validated by the caller.
  // FindMatch: the ticket's events go to `link`; `caller_deadline` is the
  // call's deadline (InfiniteFuture if none).
  void FindMatch(matchmaking::v1::FindMatchRequest request, std::shared_ptr<StreamLink> link,
                 absl::Time caller_deadline);
  void CreateTicket(matchmaking::v1::CreateTicketRequest request,
                    Responder<matchmaking::v1::Ticket>* responder);
  void GetTicket(const std::string& ticket_id, Responder<matchmaking::v1::Ticket>* responder);
  void CancelTicket(const std::string& ticket_id, Responder<matchmaking::v1::Ticket>* responder);
  void WatchTicket(const std::string& ticket_id, uint64_t after_seq,
                   std::shared_ptr<StreamLink> link);
  // The stream `link` ended without the server ending it.
  void OnStreamEnded(const StreamLink* link, DetachReason reason);
  // Stops admitting tickets and ends every active ticket (CANCELLED, its
  // stream with UNAVAILABLE "draining"), each at a random moment within
  // [start, start + spread) (at once if the spread is zero). A later call
  // with a shorter spread ends the rest sooner.
  void EndWaiting(absl::Time start, absl::Duration spread);

  // Live counts for ListQueues; thread-safe.
  uint32_t tickets_waiting() const { return tickets_waiting_.load(std::memory_order_relaxed); }
  uint32_t players_waiting() const { return players_waiting_.load(std::memory_order_relaxed); }
  uint64_t matches_formed() const { return matches_formed_.load(std::memory_order_relaxed); }

  // The queue index encoded in a ticket id (already format-checked), or -1.
  static int QueueIndexOf(const std::string& ticket_id);

 private:
  using State = matchmaking::v1::Ticket::State;
  struct Ticket;

  // PoolListener.
  bool StillWaiting(matcher::TicketKey key) override;
  void OnMatched(const matcher::FormedMatch& match) override;
  void OnExpired(matcher::TicketKey key) override;
  void OnWithdrawn(matcher::TicketKey key) override;

  // Admission shared by FindMatch and CreateTicket: capacity and player
  // uniqueness. On success the ticket exists, holds the players (taken from
  // `players`, which is left empty) and is in the pool, created at `now`.
  absl::StatusOr<Ticket*> Admit(
      google::protobuf::RepeatedPtrField<matchmaking::v1::Player>* players, bool poll,
      absl::Time now, absl::Time expires);
  Ticket* Find(const std::string& ticket_id);
  grpc::Status TicketNotFound(const std::string& ticket_id) const;
  // Matches what can match now and re-arms the pool's timer. `trim`: also
  // drop the finished tickets beyond the retention cap (a caller that still
  // reads a ticket that may have just ended trims after).
  void RunPool(bool trim = true);
  // (Re)arms the timer that runs the pool at its next wakeup (at once if
  // that has passed).
  void ArmPoolTimer(absl::Time now);
  // Moves a ticket to a terminal state: leaves the pool, frees its players,
  // ends its stream with `stream_status` (if attached) and schedules removal.
  void Finish(Ticket& t, State state, std::string detail, const grpc::Status& stream_status,
              grpc::ByteBuffer* last = nullptr);
  // Binds the stream; with `heartbeat`, arms the ticket's heartbeats.
  void Attach(Ticket& t, std::shared_ptr<StreamLink> link, bool heartbeat = true);
  void ScheduleHeartbeat(Ticket& t);
  // Sends `queued` to a FindMatch ticket still waiting and told nothing yet
  // (seq 0), then starts its heartbeats.
  void SendQueuedIfUntold(matcher::TicketKey key);
  void ScheduleLease(Ticket& t, absl::Time when);
  void Heartbeat(matcher::TicketKey key);
  void LeaseExpired(matcher::TicketKey key);
  void Requeue(Ticket& t);
  static matcher::TicketSpec Spec(const Ticket& t);
  void Detach(const StreamLink* link, DetachReason reason);
  // Drops the oldest finished tickets beyond the retention cap. Only where no
  // ticket reference is held (not inside Finish or a pool callback).
  void TrimRetired();
  void EraseTicket(matcher::TicketKey key);
  // Drops the index entries of the players still in t.players.
  void ReleasePlayers(const Ticket& t);
  // A key due at a time; a DueFifo's times only grow (each entry waits the
  // same time), so one timer on its front serves them all.
  struct Due {
    matcher::TicketKey key;
    absl::Time at;
  };
  struct DueFifo {
    explicit DueFifo(void (QueueRuntime::*handler)(matcher::TicketKey)) : on_due(handler) {}
    std::deque<Due> entries;
    EventLoop::TimerId timer = 0;  // armed on the front; 0: none; kFifoRunning: running
    void (QueueRuntime::*const on_due)(matcher::TicketKey);
  };
  static constexpr EventLoop::TimerId kFifoRunning = ~EventLoop::TimerId{0};
  // Appends an entry and arms the FIFO's timer if it has none.
  void PushDue(DueFifo* fifo, matcher::TicketKey key, absl::Time at);
  // Runs (this->*on_due)(key) for each entry of `fifo` when its time comes:
  // on time for an entry at the front of an idle FIFO, otherwise at most
  // kFifoBatch late, so that under load one timer serves many entries.
  void ArmFifo(DueFifo* fifo, absl::Time not_before);
  void EndDrained(matcher::TicketKey key);
  matchmaking::v1::MatchEvent QueuedEvent(const Ticket& t, uint64_t seq) const;
  matchmaking::v1::MatchEvent SearchingEvent(Ticket& t);
  matchmaking::v1::Ticket ToProto(const Ticket& t) const;
  void PublishCounts();
  static int64_t RetainedBytes(const Ticket& t);

  const int index_;
  const QueueSettings settings_;
  Runtime* const runtime_;  // not owned
  EventLoop* const loop_;   // not owned
  matcher::Pool pool_;
  // Tickets by key, in recycled slots: a key is (sequence << kSlotBits) |
  // slot, so a lookup is an index and a check, and a ticket that ends frees
  // its slot for the next one (its id's storage included) instead of going
  // back to malloc. Keys still grow with arrival order. Slots come in chunks
  // of kChunkSlots, so a slot's address needs no load (see TrimRetired's
  // prefetch). The table keeps its peak number of slots.
  static constexpr int kSlotBits = 24;
  static constexpr uint64_t kSlotMask = (uint64_t{1} << kSlotBits) - 1;
  static constexpr int kChunkBits = 10;
  static constexpr uint64_t kChunkSlots = uint64_t{1} << kChunkBits;
  std::vector<std::unique_ptr<Ticket[]>> chunks_;
  uint64_t slot_count_ = 0;  // slots handed out so far: chunks_ hold at least as many
  std::vector<uint32_t> free_slots_;
  uint64_t next_sequence_ = 1;
  Ticket& Slot(uint64_t slot) const;
  // The ticket with this key, or null (ended and dropped, or never there).
  Ticket* Lookup(matcher::TicketKey key) const;
  // A ticket that is known to exist.
  Ticket& At(matcher::TicketKey key) const;
  // A fresh ticket with a new key, or null if every slot is taken.
  Ticket* NewTicket();
  // Player id -> the QUEUED or DETACHED ticket holding it. Open addressing:
  // an entry is not an allocation of its own, and a lookup probes one array
  // instead of following a bucket's chain of nodes.
  absl::flat_hash_map<std::string, matcher::TicketKey> players_;
  // Scratch for OnMatched: a ticket's players on their way into the match,
  // and the match itself. Once serialized, the match gives up its players
  // and is cleared for the next one: its strings, teams and submessages keep
  // their storage, so building a match allocates next to nothing.
  std::vector<matchmaking::v1::Player*> moved_players_;
  matchmaking::v1::Match match_scratch_;
  // Finished tickets, oldest first, with the end of their retention (see
  // RuntimeLimits::max_retained_tickets); one timer serves the front.
  DueFifo retired_{&QueueRuntime::EraseTicket};
  // Match-attribute value lists in use -> their pool partition, counted by
  // active tickets (an entry goes with its last ticket).
  struct Partition {
    uint64_t id;
    int tickets;
  };
  std::unordered_map<std::string, Partition> partitions_;
  uint64_t next_partition_ = 1;
  uint64_t AcquirePartition(const std::string& key);
  void ReleasePartition(const std::string& key);
  // FindMatch tickets to tell `queued` (RuntimeLimits::queued_delay after
  // they arrived), oldest first; one timer serves the front, as for retired_.
  DueFifo queued_due_{&QueueRuntime::SendQueuedIfUntold};
  // Tickets' next `searching` heartbeats, oldest first; one timer serves the
  // front (no timer per waiting ticket in the loop's heap).
  DueFifo heartbeats_{&QueueRuntime::Heartbeat};
  std::mt19937_64 rng_;
  Metrics::Queue* const metrics_;  // owned by runtime_->metrics
  EventLoop::TimerId pool_timer_ = 0;
  absl::Time pool_timer_at_ = absl::InfiniteFuture();
  bool draining_ = false;
  // True while pool_.Process runs: the pool must not be called back then.
  bool in_pool_callback_ = false;
  int active_ = 0;  // tickets QUEUED or DETACHED
  // Finished tickets dropped before ticket_retention ended, to keep
  // max_retained_tickets (NOT_FOUND then says so).
  bool retained_capped_ = false;
  // RetainedBytes of the finished tickets kept (max_retained_bytes_per_queue).
  int64_t retained_bytes_ = 0;

  std::atomic<uint32_t> tickets_waiting_{0};
  std::atomic<uint32_t> players_waiting_{0};
  std::atomic<uint64_t> matches_formed_{0};
};

}  // namespace matchd

#endif  // MATCHD_SERVICE_QUEUE_RUNTIME_H_
