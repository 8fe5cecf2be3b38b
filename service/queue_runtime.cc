#include "service/queue_runtime.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <utility>
#include <vector>

#include <google/protobuf/unknown_field_set.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/log.h"
#include "service/status_util.h"
#include "service/validation.h"

namespace matchd {

namespace mm = ::matchmaking::v1;

namespace {

// How late a DueFifo entry may run when its FIFO's timer has just fired:
// under load one timer then serves every entry of a millisecond, instead of
// one timer per entry.
constexpr absl::Duration kFifoBatch = absl::Milliseconds(1);
// How many of the oldest retained tickets TrimRetired loads ahead: a 1v1
// match ends two tickets.
constexpr size_t kPrefetchRetired = 2;

// Appends the low `digits` hex digits of `value` (lower case, zero-padded):
// ticket and match ids, one per ticket, without a format string.
void AppendHex(uint64_t value, int digits, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  const size_t at = out->size();
  out->resize(at + digits);
  for (int i = digits - 1; i >= 0; --i) {
    (*out)[at + i] = kHex[value & 0xf];
    value >>= 4;
  }
}

}  // namespace

TeamValues WinProbabilities(absl::Span<const double> team_ratings) {
  // Relative to the strongest team, so that 10^(r/400) cannot overflow.
  const double top = *std::max_element(team_ratings.begin(), team_ratings.end());
  TeamValues p;
  double sum = 0;
  for (double r : team_ratings) {
    p.push_back(std::pow(10.0, (r - top) / 400.0));
    sum += p.back();
  }
  for (double& x : p) x /= sum;
  return p;
}
using matcher::TicketKey;

struct QueueRuntime::Ticket {
  TicketKey key = 0;
  std::string id;
  bool poll = false;  // made by CreateTicket; otherwise by FindMatch
  State state = mm::Ticket::QUEUED;
  // The party, until it is matched: then its players move into the match,
  // team match_team from index match_first on (see ToProto).
  google::protobuf::RepeatedPtrField<mm::Player> players;
  int party_size = 0;
  int match_team = -1;
  int match_first = 0;
  double rating = 0;
  std::array<uint16_t, matcher::QueueRules::kMaxRegions> latency_ms;  // per region of the queue
  std::string partition_key;  // see PartitionKey; empty without match attributes
  uint64_t custom = 0;        // the custom rule's data (CustomRule::TicketData)
  uint64_t partition = 0;
  absl::Time created;  // the original enqueue time, kept across re-attach
  absl::Time expires;  // the queue's maximum wait or the caller's deadline
  bool expires_by_caller = false;
  uint32_t queued_players_waiting = 0;
  uint64_t seq = 0;                  // of the last event produced
  uint64_t matched_seq = 0;          // of the `matched` event
  std::shared_ptr<StreamLink> link;  // the attached stream, if any
  SharedMatch match;
  std::string detail;
  // One timer serves the poll TTL (QUEUED poll tickets without a stream) and
  // the re-attach grace (DETACHED). For finished tickets lease_until is the
  // end of retention, which retired_ keeps.
  absl::Time lease_until = absl::InfiniteFuture();
  absl::Time lease_timer_at = absl::InfiniteFuture();
  EventLoop::TimerId lease_timer = 0;
  // When the next `searching` is due (InfiniteFuture: no heartbeats). An
  // entry of heartbeats_ at another time is stale.
  absl::Time heartbeat_at = absl::InfiniteFuture();
  // Finished: its share of retained_bytes_ (RetainedBytes), 0 before.
  int64_t retained_bytes = 0;
  // Its party's serialized size, doubled for protobuf's objects: its share of
  // Metrics::waiting_party_bytes while active, and part of RetainedBytes after.
  int64_t party_bytes = 0;

  bool active() const { return state == mm::Ticket::QUEUED || state == mm::Ticket::DETACHED; }
};

QueueRuntime::QueueRuntime(int index, QueueSettings settings, Runtime* runtime, EventLoop* loop)
    : index_(index),
      settings_(std::move(settings)),
      runtime_(runtime),
      loop_(loop),
      pool_(settings_.rules, this),
      rng_(std::random_device{}()),
      metrics_(&runtime->metrics->queue(index)) {
  metrics_->max_wait_seconds.Set(absl::ToDoubleSeconds(settings_.rules.max_wait));
}

QueueRuntime::~QueueRuntime() = default;

int QueueRuntime::QueueIndexOf(const std::string& ticket_id) {
  uint32_t index = 0;
  if (ticket_id.size() < 4 || !absl::SimpleHexAtoi(ticket_id.substr(0, 4), &index)) return -1;
  return static_cast<int>(index);
}

QueueRuntime::Ticket* QueueRuntime::Find(const std::string& ticket_id) {
  uint64_t key = 0;
  if (ticket_id.size() != 32 || !absl::SimpleHexAtoi(ticket_id.substr(4, 16), &key)) {
    return nullptr;
  }
  Ticket* t = Lookup(key);
  if (t == nullptr || t->id != ticket_id) return nullptr;
  return t;
}

inline QueueRuntime::Ticket& QueueRuntime::Slot(uint64_t slot) const {
  return chunks_[slot >> kChunkBits][slot & (kChunkSlots - 1)];
}

QueueRuntime::Ticket* QueueRuntime::Lookup(TicketKey key) const {
  const uint64_t slot = key & kSlotMask;
  if (slot >= slot_count_) return nullptr;
  Ticket* t = &Slot(slot);
  return key != 0 && t->key == key ? t : nullptr;  // 0: a free slot's key
}

QueueRuntime::Ticket& QueueRuntime::At(TicketKey key) const {
  Ticket* t = Lookup(key);
  assert(t != nullptr);
  return *t;
}

QueueRuntime::Ticket* QueueRuntime::NewTicket() {
  uint64_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    if (slot_count_ > kSlotMask) return nullptr;
    slot = slot_count_++;
    if ((slot >> kChunkBits) == chunks_.size()) {
      chunks_.push_back(std::make_unique<Ticket[]>(kChunkSlots));
    }
  }
  Ticket* t = &Slot(slot);
  t->key = (next_sequence_++ << kSlotBits) | slot;
  return t;
}

grpc::Status QueueRuntime::TicketNotFound(const std::string& ticket_id) const {
  std::string message =
      absl::StrCat("ticket ", ticket_id, " not found: unknown, or it ended more than ",
                   absl::FormatDuration(runtime_->limits.ticket_retention), " ago");
  if (retained_capped_) {
    absl::StrAppend(&message, " or was among the oldest finished tickets, dropped early to keep "
                    "this queue within ", runtime_->limits.max_retained_tickets,
                    " of them and its share of --max_retained_bytes (--max_retained_tickets)");
  }
  return grpc::Status(grpc::StatusCode::NOT_FOUND, message);
}

void QueueRuntime::PublishCounts() {
  tickets_waiting_.store(static_cast<uint32_t>(pool_.tickets_waiting()), std::memory_order_relaxed);
  metrics_->waiting.Set(static_cast<double>(pool_.tickets_waiting()));
  players_waiting_.store(static_cast<uint32_t>(pool_.players_waiting()), std::memory_order_relaxed);
}

absl::StatusOr<QueueRuntime::Ticket*> QueueRuntime::Admit(
    google::protobuf::RepeatedPtrField<mm::Player>* taken, bool poll, absl::Time now,
    absl::Time expires) {
  const google::protobuf::RepeatedPtrField<mm::Player>& players = *taken;
  if (draining_ || runtime_->draining.load()) {
    return absl::UnavailableError("server is draining; retry on another replica");
  }
  for (const mm::Player& p : players) {
    auto it = players_.find(p.id());
    if (it == players_.end()) continue;
    const Ticket& holder = At(it->second);
    if (holder.state == mm::Ticket::DETACHED) {
      return absl::AlreadyExistsError(absl::StrCat(
          "player \"", p.id(), "\" has a detached ticket ", holder.id, " in queue \"",
          settings_.name, "\"; re-attach it with WatchTicket or cancel it with CancelTicket"));
    }
    return absl::AlreadyExistsError(absl::StrCat("player \"", p.id(),
                                                 "\" is already waiting in queue \"",
                                                 settings_.name, "\" (ticket ", holder.id, ")"));
  }
  // The custom rule's data first: a refused party takes no capacity.
  uint64_t custom = 0;
  if (settings_.rules.custom_rule != nullptr) {
    std::vector<matcher::PlayerAttributes> party;
    for (const mm::Player& p : players) {
      party.emplace_back(p.attributes().begin(), p.attributes().end());
    }
    absl::StatusOr<uint64_t> data = settings_.rules.custom_rule->TicketData(party);
    if (!data.ok()) return absl::InvalidArgumentError(data.status().message());
    custom = *data;
  }
  // Fields this version does not know (a newer client's, or padding) would
  // ride along in the ticket to every member of its match and to GetTicket:
  // a caller's bytes forwarded to other callers. Dropped before anything
  // counts the party's size.
  int64_t party_bytes = 0;
  for (mm::Player& p : *taken) {
    const google::protobuf::Reflection* reflection = p.GetReflection();
    if (!reflection->GetUnknownFields(p).empty()) reflection->MutableUnknownFields(&p)->Clear();
    party_bytes += 2 * static_cast<int64_t>(p.ByteSizeLong());
  }
  if (active_ >= settings_.max_waiting_tickets) {
    // Detached tickets (held for re-attach) count too, though they are not
    // in the pool's, or ListQueues', waiting counts.
    const int detached = active_ - static_cast<int>(pool_.tickets_waiting());
    return absl::ResourceExhaustedError(absl::StrCat(
        "queue \"", settings_.name, "\" is full (", active_, " tickets, its configured maximum",
        detached > 0 ? absl::StrCat(": ", detached, " of them detached, held for re-attach") : "",
        "); retry later"));
  }
  const int64_t limit = runtime_->limits.max_waiting_tickets;
  if (runtime_->active_tickets.fetch_add(1) >= limit) {
    runtime_->active_tickets.fetch_sub(1);
    return absl::ResourceExhaustedError(absl::StrCat("server is at its capacity of ", limit,
                                                     " waiting tickets; retry later or elsewhere"));
  }
  const int64_t byte_limit = runtime_->metrics->waiting_party_bytes_limit();
  if (const int64_t held = runtime_->metrics->waiting_party_bytes.fetch_add(party_bytes);
      held + party_bytes > byte_limit) {
    runtime_->metrics->waiting_party_bytes.fetch_sub(party_bytes);
    runtime_->active_tickets.fetch_sub(1);
    return absl::ResourceExhaustedError(absl::StrCat(
        "server is at its capacity for waiting parties: they hold ", held, " of the ", byte_limit,
        " bytes --max_waiting_bytes allows, and this party counts ", party_bytes,
        " (twice its serialized size); retry later or elsewhere"));
  }
  // Undoes the two reservations above when the ticket cannot be added.
  auto unreserve = [&] {
    runtime_->metrics->waiting_party_bytes.fetch_sub(party_bytes);
    runtime_->active_tickets.fetch_sub(1);
  };
  Ticket* fresh = NewTicket();
  if (fresh == nullptr) {
    unreserve();
    return absl::ResourceExhaustedError(
        absl::StrCat("queue \"", settings_.name, "\" holds its maximum of ", kSlotMask + 1,
                     " tickets, waiting and retained; retry later"));
  }
  Ticket& t = *fresh;
  t.id.reserve(32);
  AppendHex(index_, 4, &t.id);
  AppendHex(t.key, 16, &t.id);
  AppendHex(rng_(), 12, &t.id);
  t.poll = poll;
  t.rating = PartyRating(players);
  t.latency_ms = PartyLatency(players, settings_);
  t.custom = custom;
  t.party_bytes = party_bytes;
  if (!settings_.match_attributes.empty()) {
    t.partition_key = PartitionKey(players, settings_);
    t.partition = AcquirePartition(t.partition_key);
  }
  t.created = now;
  t.expires = expires;
  t.seq = 1;              // the `queued` event
  t.players.Swap(taken);  // `players` is empty from here on
  t.party_size = t.players.size();
  if (absl::Status added = pool_.Add(Spec(t)); !added.ok()) {
    unreserve();
    if (t.partition != 0) ReleasePartition(t.partition_key);
    taken->Swap(&t.players);
    EraseTicket(t.key);
    return added;
  }
  for (const mm::Player& p : t.players) players_[p.id()] = t.key;
  ++active_;
  t.queued_players_waiting = static_cast<uint32_t>(pool_.players_waiting());
  if (LogEnabled(LogLevel::kDebug)) {
    Log(LogLevel::kDebug, "ticket queued",
        {{"queue", settings_.name},
         {"ticket", t.id},
         {"players", t.players.size()},
         {"poll", poll}});
  }
  metrics_->created.Increment();
  PublishCounts();
  return &t;
}

void QueueRuntime::FindMatch(mm::FindMatchRequest request, std::shared_ptr<StreamLink> link,
                             absl::Time caller_deadline) {
  const absl::Time now = runtime_->clock->Now();
  const absl::Time max_wait_end = now + settings_.rules.max_wait;
  absl::StatusOr<Ticket*> admitted = Admit(request.mutable_players(), /*poll=*/false, now,
                                           std::min(max_wait_end, caller_deadline));
  if (!admitted.ok()) {
    link->Close(ToGrpcStatus(admitted.status()));
    return;
  }
  Ticket& t = **admitted;
  t.expires_by_caller = caller_deadline < max_wait_end;
  // Match first. A ticket that completes a match on arrival, or within
  // queued_delay, gets `matched` as its first event (seq 1) and no `queued`:
  // one message on the stream instead of two. A ticket still waiting then is
  // told `queued` and its heartbeats start.
  t.seq = 0;
  Attach(t, std::move(link), /*heartbeat=*/false);
  const TicketKey key = t.key;
  RunPool();
  // By key from here: a ticket that ended may already be gone (TrimRetired).
  const absl::Duration delay = runtime_->limits.queued_delay;
  if (delay == absl::ZeroDuration()) return SendQueuedIfUntold(key);
  const Ticket* waiting = Lookup(key);
  if (waiting == nullptr || waiting->state != mm::Ticket::QUEUED) return;  // matched on arrival
  PushDue(&queued_due_, key, now + delay);
}

void QueueRuntime::SendQueuedIfUntold(TicketKey key) {
  Ticket* found = Lookup(key);
  if (found == nullptr) return;
  Ticket& t = *found;
  if (t.state != mm::Ticket::QUEUED || t.link == nullptr || t.seq != 0) return;
  t.seq = 1;
  // The next heartbeat is set before the caller can see `queued` (the send is
  // written on another loop at once): it counts from now, not from whenever
  // this step ends.
  ScheduleHeartbeat(t);
  t.link->Send(EventBytes(QueuedEvent(t, 1)));
}

void QueueRuntime::PushDue(DueFifo* fifo, TicketKey key, absl::Time at) {
  fifo->entries.push_back(Due{key, at});
  if (fifo->timer == 0) ArmFifo(fifo, absl::InfinitePast());
}

void QueueRuntime::ArmFifo(DueFifo* fifo, absl::Time not_before) {
  if (fifo->entries.empty()) return;
  // Two pointers: the task fits in EventLoop::Task without an allocation.
  fifo->timer = loop_->RunAt(std::max(fifo->entries.front().at, not_before), [this, fifo] {
    // Still marked armed while the entries run: one that pushes another (a
    // heartbeat scheduling the next) must not arm a second timer beside the
    // one armed below, or every run would leave one more chain of them.
    fifo->timer = kFifoRunning;
    const absl::Time now = runtime_->clock->Now();
    while (!fifo->entries.empty() && fifo->entries.front().at <= now) {
      const TicketKey key = fifo->entries.front().key;
      fifo->entries.pop_front();
      (this->*(fifo->on_due))(key);
    }
    fifo->timer = 0;
    ArmFifo(fifo, now + kFifoBatch);
  });
}

void QueueRuntime::CreateTicket(mm::CreateTicketRequest request, Responder<mm::Ticket>* responder) {
  const absl::Time now = runtime_->clock->Now();
  absl::StatusOr<Ticket*> admitted =
      Admit(request.mutable_players(), /*poll=*/true, now, now + settings_.rules.max_wait);
  if (!admitted.ok()) {
    responder->Fail(ToGrpcStatus(admitted.status()));
    return;
  }
  Ticket& t = **admitted;
  ScheduleLease(t, now + settings_.poll_ttl);
  // Match first: the ticket that completes a match learns it in this reply
  // rather than one poll later, and (as on a FindMatch) `matched` is its
  // first event, seq 1. Retention may drop it as soon as it ends, so the
  // reply is built before.
  t.seq = 0;
  RunPool(/*trim=*/false);
  if (t.state == mm::Ticket::QUEUED) t.seq = 1;  // the `queued` event
  responder->Reply(ToProto(t));
  TrimRetired();
}

void QueueRuntime::GetTicket(const std::string& ticket_id, Responder<mm::Ticket>* responder) {
  Ticket* t = Find(ticket_id);
  if (t == nullptr) {
    responder->Fail(TicketNotFound(ticket_id));
    return;
  }
  if (t->poll && t->state == mm::Ticket::QUEUED && t->link == nullptr) {
    ScheduleLease(*t, runtime_->clock->Now() + settings_.poll_ttl);
  }
  responder->Reply(ToProto(*t));
}

void QueueRuntime::CancelTicket(const std::string& ticket_id, Responder<mm::Ticket>* responder) {
  Ticket* t = Find(ticket_id);
  if (t == nullptr) {
    responder->Fail(TicketNotFound(ticket_id));
    return;
  }
  if (!t->active()) {
    std::string what = mm::Ticket::State_Name(t->state);
    if (t->state == mm::Ticket::MATCHED) {
      absl::StrAppend(&what, " (match ", t->match.Parse().match_id(), "); the match stands");
    }
    responder->Fail(grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        absl::StrCat("ticket ", ticket_id, " can no longer be cancelled: it is already ", what)));
    return;
  }
  Finish(*t, mm::Ticket::CANCELLED, "cancelled by CancelTicket",
         grpc::Status(grpc::StatusCode::CANCELLED, "ticket cancelled by CancelTicket"));
  responder->Reply(ToProto(*t));
  TrimRetired();
}

void QueueRuntime::WatchTicket(const std::string& ticket_id, uint64_t after_seq,
                               std::shared_ptr<StreamLink> link) {
  Ticket* found = Find(ticket_id);
  if (found == nullptr) {
    link->Close(TicketNotFound(ticket_id));
    return;
  }
  Ticket& t = *found;
  if (after_seq > t.seq) {
    link->Close(grpc::Status(
        grpc::StatusCode::OUT_OF_RANGE,
        absl::StrCat("after_seq ", after_seq, " is beyond the ticket's last event, seq ", t.seq)));
    return;
  }
  if (t.link != nullptr) {
    t.link->Close(
        grpc::Status(grpc::StatusCode::ABORTED, "another WatchTicket call took over this ticket"));
    t.link.reset();
  }
  switch (t.state) {
    case mm::Ticket::MATCHED:
      if (after_seq < t.matched_seq) {
        grpc::ByteBuffer last =
            MatchedEventBytes(t.id, t.matched_seq, runtime_->clock->Now(), t.match);
        link->Close(grpc::Status::OK, &last);
      } else {
        link->Close(grpc::Status::OK);
      }
      return;
    case mm::Ticket::EXPIRED:
      link->Close(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, t.detail));
      return;
    case mm::Ticket::CANCELLED:
      link->Close(grpc::Status(grpc::StatusCode::CANCELLED, t.detail));
      return;
    case mm::Ticket::DETACHED:
      if (draining_) {
        link->Close(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                 "server is draining; retry on another replica"));
        return;
      }
      Requeue(t);
      break;
    default:
      break;
  }
  Attach(t, std::move(link));
  // Match first: a re-attached ticket may complete a match at once, and its
  // `matched` then ends the call; a searching event before it would name no
  // blocker. By key from here: a ticket that ended may be gone.
  const TicketKey key = t.key;
  RunPool();
  Ticket* waiting = Lookup(key);
  if (waiting == nullptr || waiting->state != mm::Ticket::QUEUED || waiting->link == nullptr) {
    return;
  }
  if (after_seq < 1) {
    // A FindMatch ticket may not have been told yet.
    waiting->seq = std::max<uint64_t>(waiting->seq, 1);
    waiting->link->Send(EventBytes(QueuedEvent(*waiting, 1)));
  }
  waiting->link->Send(EventBytes(SearchingEvent(*waiting)));
}

matcher::TicketSpec QueueRuntime::Spec(const Ticket& t) {
  matcher::TicketSpec spec;
  spec.key = t.key;
  spec.party_size = t.party_size;
  spec.rating = t.rating;
  spec.enqueued_at = t.created;  // kept on re-attach: no lost priority
  spec.expires_at = t.expires;
  spec.partition = t.partition;
  spec.latency_ms = t.latency_ms;
  spec.custom = t.custom;
  return spec;
}

uint64_t QueueRuntime::AcquirePartition(const std::string& key) {
  auto [it, added] = partitions_.try_emplace(key, Partition{next_partition_, 0});
  if (added) ++next_partition_;
  ++it->second.tickets;
  return it->second.id;
}

void QueueRuntime::ReleasePartition(const std::string& key) {
  auto it = partitions_.find(key);
  if (it != partitions_.end() && --it->second.tickets == 0) partitions_.erase(it);
}

void QueueRuntime::Requeue(Ticket& t) {
  // The dropped call's deadline went with it: the queue's maximum wait
  // bounds the ticket now, and the new call's deadline ends that call.
  t.expires = t.created + settings_.rules.max_wait;
  t.expires_by_caller = false;
  (void)pool_.Add(Spec(t));  // the key is not in the pool while DETACHED
  t.state = mm::Ticket::QUEUED;
  t.detail.clear();
  t.lease_until = absl::InfiniteFuture();
  PublishCounts();
}

void QueueRuntime::Detach(const StreamLink* link, DetachReason reason) {
  Ticket* found = Lookup(link->ticket_key());
  if (found == nullptr || found->link.get() != link) return;  // already replaced
  Ticket& t = *found;
  t.link.reset();
  t.heartbeat_at = absl::InfiniteFuture();
  if (t.state != mm::Ticket::QUEUED) return;
  const absl::Time now = runtime_->clock->Now();
  if (t.poll) {
    ScheduleLease(t, now + settings_.poll_ttl);  // a watcher left; polling keeps it
    return;
  }
  if (reason == DetachReason::kCallerDeadline) {
    Finish(t, mm::Ticket::EXPIRED, "the caller's deadline passed before a match was found",
           grpc::Status::OK);
    return;
  }
  if (settings_.reattach_grace <= absl::ZeroDuration()) {
    Finish(t, mm::Ticket::CANCELLED, "the FindMatch call was closed", grpc::Status::OK);
    return;
  }
  if (!in_pool_callback_) {
    pool_.Remove(t.key);
    // The walk around an anchor takes the nearest tickets that fit: one that
    // leaves can let two others complete a group now. Remove marks them due;
    // the timer runs the pool.
    ArmPoolTimer(now);
  }
  t.state = mm::Ticket::DETACHED;
  t.detail = absl::StrCat("the FindMatch call was closed; re-attach with WatchTicket within ",
                          absl::FormatDuration(settings_.reattach_grace));
  ScheduleLease(t, now + settings_.reattach_grace);
  PublishCounts();
}

void QueueRuntime::OnStreamEnded(const StreamLink* link, DetachReason reason) {
  Detach(link, reason);
  TrimRetired();
}

void QueueRuntime::EndWaiting(absl::Time start, absl::Duration spread) {
  draining_ = true;
  std::uniform_real_distribution<double> jitter(0.0, 1.0);
  // The keys first: ending a ticket may drop others from the table.
  std::vector<TicketKey> active;
  for (uint64_t slot = 0; slot < slot_count_; ++slot) {
    const Ticket& ticket = Slot(slot);
    if (ticket.key != 0 && ticket.active()) active.push_back(ticket.key);
  }
  for (const TicketKey key : active) {
    if (spread <= absl::ZeroDuration()) {
      EndDrained(key);
      continue;
    }
    // Spread so that callers do not all reconnect to other replicas at once.
    loop_->RunAt(start + spread * jitter(rng_), [this, key] { EndDrained(key); });
  }
  TrimRetired();
}

void QueueRuntime::EndDrained(TicketKey key) {
  Ticket* t = Lookup(key);
  if (t == nullptr || !t->active()) return;
  Finish(
      *t, mm::Ticket::CANCELLED, "the server drained",
      grpc::Status(grpc::StatusCode::UNAVAILABLE, "server is draining; retry on another replica"));
  TrimRetired();
}

bool QueueRuntime::StillWaiting(TicketKey key) {
  const Ticket& t = At(key);
  if (t.poll) return true;  // polling tickets leave only on this loop
  return t.link != nullptr && !t.link->gone();
}

void QueueRuntime::OnWithdrawn(TicketKey key) {
  Ticket& t = At(key);
  // The stream is gone but its Detach has not arrived yet; act on it now.
  if (t.link == nullptr) {
    Finish(t, mm::Ticket::CANCELLED, "the FindMatch call was closed", grpc::Status::OK);
    return;
  }
  Detach(t.link.get(), DetachReason::kCallEnded);
}

void QueueRuntime::OnExpired(TicketKey key) {
  Ticket& t = At(key);
  std::string why =
      t.expires_by_caller
          ? std::string("the caller's deadline passed before a match was found")
          : absl::StrCat("no match within queue \"", settings_.name, "\"'s maximum wait of ",
                         absl::FormatDuration(settings_.rules.max_wait),
                         "; try again later or in another queue");
  Finish(t, mm::Ticket::EXPIRED, why, grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, why));
}

void QueueRuntime::OnMatched(const matcher::FormedMatch& formed) {
  mm::Match& m = match_scratch_;
  m.Clear();
  std::string* match_id = m.mutable_match_id();
  match_id->reserve(26);
  match_id->append("m-");
  AppendHex(rng_(), 16, match_id);
  AppendHex(rng_(), 8, match_id);
  m.set_queue(settings_.name);
  *m.mutable_created() = ToProtoTime(formed.formed_at);
  for (const std::vector<TicketKey>& team : formed.teams) {
    mm::Team* out = m.add_teams();
    double sum = 0;
    for (TicketKey key : team) {
      Ticket& t = At(key);
      for (const mm::Player& p : t.players) sum += p.rating();
      // Moved, not copied: the match holds the players from here on.
      t.match_team = m.teams_size() - 1;
      t.match_first = out->players_size();
      ReleasePlayers(t);
      moved_players_.resize(t.players.size());
      t.players.ExtractSubrange(0, t.players.size(), moved_players_.data());
      for (mm::Player* p : moved_players_) out->mutable_players()->AddAllocated(p);
      m.add_ticket_ids(t.id);
    }
    if (out->players_size() > 0) out->set_mean_rating(sum / out->players_size());
  }
  mm::MatchQuality* q = m.mutable_quality();
  q->set_rating_spread(formed.rating_spread);
  q->set_team_gap(formed.team_gap);
  if (settings_.rules.rated) {
    TeamValues means;
    for (const mm::Team& team : m.teams()) means.push_back(team.mean_rating());
    const TeamValues p = WinProbabilities(means);
    q->mutable_win_probability()->Add(p.begin(), p.end());
  }
  *q->mutable_mean_wait() = ToProtoDuration(formed.mean_wait);
  if (formed.region >= 0) {
    const std::string& region = settings_.regions[formed.region];
    q->set_region(region);
    // Every member gave this region: the ticket was reachable there.
    for (const mm::Team& team : m.teams()) {
      for (const mm::Player& p : team.players()) {
        (*q->mutable_latency_ms())[p.id()] = p.latency_ms().at(region);
      }
    }
  }
  const SharedMatch shared = MakeSharedMatch(m);
  // The players end with the match's bytes; a cleared Player would only be
  // reused by Add(), never by AddAllocated().
  for (mm::Team& team : *m.mutable_teams()) {
    team.mutable_players()->DeleteSubrange(0, team.players_size());
  }
  matches_formed_.fetch_add(1, std::memory_order_relaxed);
  metrics_->matches.Increment();
  metrics_->rating_spread.Observe(formed.rating_spread);
  metrics_->team_gap.Observe(formed.team_gap);
  for (const std::vector<TicketKey>& team : formed.teams) {
    for (TicketKey key : team) {
      Ticket& t = At(key);
      t.match = shared;
      t.matched_seq = ++t.seq;
      if (t.link != nullptr) {
        grpc::ByteBuffer last = MatchedEventBytes(t.id, t.seq, formed.formed_at, shared);
        Finish(t, mm::Ticket::MATCHED, "", grpc::Status::OK, &last);
      } else {
        Finish(t, mm::Ticket::MATCHED, "", grpc::Status::OK);
      }
    }
  }
}

void QueueRuntime::Finish(Ticket& t, State state, std::string detail,
                          const grpc::Status& stream_status, grpc::ByteBuffer* last) {
  const absl::Time now = runtime_->clock->Now();
  if (t.active()) {
    if (t.state == mm::Ticket::QUEUED && !in_pool_callback_) {
      pool_.Remove(t.key);
      ArmPoolTimer(now);  // a departure can complete another group (see Detach)
    }
    ReleasePlayers(t);  // (a matched ticket's players left in OnMatched)
    --active_;
    runtime_->active_tickets.fetch_sub(1);
    runtime_->metrics->waiting_party_bytes.fetch_sub(t.party_bytes);
    if (t.partition != 0) ReleasePartition(t.partition_key);
    switch (state) {
      case mm::Ticket::MATCHED:
        metrics_->matched.Increment();
        metrics_->wait_seconds.Observe(absl::ToDoubleSeconds(now - t.created));
        break;
      case mm::Ticket::EXPIRED:
        metrics_->expired.Increment();
        break;
      default:
        metrics_->cancelled.Increment();
        break;
    }
  }
  if (LogEnabled(LogLevel::kDebug)) {
    Log(LogLevel::kDebug, "ticket ended",
        {{"queue", settings_.name},
         {"ticket", t.id},
         {"state", mm::Ticket::State_Name(state)},
         {"detail", detail}});
  }
  t.state = state;
  t.detail = std::move(detail);
  t.heartbeat_at = absl::InfiniteFuture();
  if (t.link != nullptr) {
    t.link->Close(stream_status, last);
    t.link.reset();
  }
  // Retention needs no timer of its own: every finished ticket is kept for
  // the same time, so the FIFO of finished tickets is also their expiry
  // order and one timer on its front serves them all.
  loop_->CancelTimer(t.lease_timer);
  t.lease_timer = 0;
  t.lease_timer_at = absl::InfiniteFuture();
  t.lease_until = now + runtime_->limits.ticket_retention;
  t.retained_bytes = RetainedBytes(t);
  retained_bytes_ += t.retained_bytes;
  PushDue(&retired_, t.key, t.lease_until);
  PublishCounts();
}

void QueueRuntime::ReleasePlayers(const Ticket& t) {
  for (const mm::Player& p : t.players) {
    auto it = players_.find(p.id());
    if (it != players_.end() && it->second == t.key) players_.erase(it);
  }
}

// About what a finished ticket holds: its slot, and its party, or (once
// matched) the match it shares with the other members, counted whole for
// each of them. Serialized sizes, doubled for protobuf's objects and maps.
int64_t QueueRuntime::RetainedBytes(const Ticket& t) {
  int64_t bytes = static_cast<int64_t>(sizeof(Ticket) + t.id.capacity() + t.detail.size());
  if (!t.players.empty()) bytes += t.party_bytes;  // a matched ticket's went to the match
  bytes += static_cast<int64_t>(t.match.matched_field.size());
  return bytes;
}

void QueueRuntime::EraseTicket(TicketKey key) {
  Ticket* t = Lookup(key);
  if (t == nullptr) return;
  retained_bytes_ -= t->retained_bytes;
  // Moving a fresh ticket in releases the match, the players and the stream,
  // while the strings keep their storage for the slot's next ticket.
  *t = Ticket();
  free_slots_.push_back(static_cast<uint32_t>(key & kSlotMask));
}

void QueueRuntime::TrimRetired() {
  const size_t cap = static_cast<size_t>(runtime_->limits.max_retained_tickets);
  const int64_t byte_cap = runtime_->limits.max_retained_bytes_per_queue;
  while (retired_.entries.size() > cap ||
         (retained_bytes_ > byte_cap && !retired_.entries.empty())) {
    retained_capped_ = true;
    EraseTicket(retired_.entries.front().key);
    retired_.entries.pop_front();
  }
  // At the cap, the next tickets to end push out the oldest retained ones,
  // which have long left the cache: start loading them now, so that erasing
  // them later does not wait for memory.
  if (retired_.entries.size() == cap) {
    for (size_t i = 0; i < std::min<size_t>(kPrefetchRetired, cap); ++i) {
      const Ticket& t = Slot(retired_.entries[i].key & kSlotMask);
      for (size_t line = 0; line < sizeof(Ticket) + 63; line += 64) {
        __builtin_prefetch(reinterpret_cast<const char*>(&t) + line);
      }
    }
  }
}

void QueueRuntime::Attach(Ticket& t, std::shared_ptr<StreamLink> link, bool heartbeat) {
  link->set_ticket_key(t.key);
  t.link = std::move(link);
  if (heartbeat) ScheduleHeartbeat(t);
}

void QueueRuntime::ScheduleHeartbeat(Ticket& t) {
  // Every heartbeat waits the same interval: the FIFO's order is their due
  // order, and a later schedule makes the ticket's older entry stale.
  t.heartbeat_at = runtime_->clock->Now() + runtime_->limits.heartbeat_interval;
  PushDue(&heartbeats_, t.key, t.heartbeat_at);
}

void QueueRuntime::Heartbeat(TicketKey key) {
  Ticket* found = Lookup(key);
  if (found == nullptr) return;
  const absl::Time now = runtime_->clock->Now();
  if (found->heartbeat_at > now) return;  // stale entry, or none due
  if (pool_.NextWakeup() <= now) {
    // The pool is due too (its timer runs after this one): a match that
    // forms now is sent instead, not after a searching event that would
    // name no blocker. By key: a ticket that ended may be gone.
    RunPool();
    found = Lookup(key);
    if (found == nullptr) return;
  }
  Ticket& t = *found;
  t.heartbeat_at = absl::InfiniteFuture();
  if (t.state != mm::Ticket::QUEUED || t.link == nullptr) return;
  ScheduleHeartbeat(t);  // before the caller can see the event, as above
  t.link->Send(EventBytes(SearchingEvent(t)));
}

void QueueRuntime::ScheduleLease(Ticket& t, absl::Time when) {
  t.lease_until = when;
  // One timer per ticket: moving the lease later lets the armed timer fire and
  // re-arm (cheap for frequent polls); moving it earlier re-arms now.
  if (t.lease_timer != 0 && t.lease_timer_at <= when) return;
  loop_->CancelTimer(t.lease_timer);
  const TicketKey key = t.key;
  t.lease_timer_at = when;
  t.lease_timer = loop_->RunAt(when, [this, key] { LeaseExpired(key); });
}

void QueueRuntime::LeaseExpired(TicketKey key) {
  Ticket* found = Lookup(key);
  if (found == nullptr) return;
  Ticket& t = *found;
  t.lease_timer = 0;
  t.lease_timer_at = absl::InfiniteFuture();
  const absl::Time now = runtime_->clock->Now();
  if (t.lease_until > now) {
    ScheduleLease(t, t.lease_until);
    return;
  }
  switch (t.state) {
    case mm::Ticket::QUEUED:
      if (!t.poll || t.link != nullptr) return;  // a stream keeps it alive
      Finish(t, mm::Ticket::EXPIRED,
             absl::StrCat("nobody polled the ticket for ", absl::FormatDuration(settings_.poll_ttl),
                          " (the queue's poll TTL)"),
             grpc::Status::OK);
      RunPool();
      return;
    case mm::Ticket::DETACHED:
      Finish(t, mm::Ticket::CANCELLED,
             absl::StrCat("the FindMatch call was closed and not re-attached within ",
                          absl::FormatDuration(settings_.reattach_grace)),
             grpc::Status::OK);
      TrimRetired();
      return;
    default:
      return;  // finished: retention is the retired_ FIFO's business
  }
}

void QueueRuntime::RunPool(bool trim) {
  const absl::Time now = runtime_->clock->Now();
  in_pool_callback_ = true;
  pool_.Process(now);
  in_pool_callback_ = false;
  PublishCounts();
  if (trim) TrimRetired();
  ArmPoolTimer(now);
}

void QueueRuntime::ArmPoolTimer(absl::Time now) {
  const absl::Time wake = pool_.NextWakeup();
  if (wake == pool_timer_at_) return;
  loop_->CancelTimer(pool_timer_);
  pool_timer_ = 0;
  pool_timer_at_ = wake;
  if (wake == absl::InfiniteFuture()) return;
  pool_timer_ = loop_->RunAt(std::max(wake, now), [this] {
    pool_timer_ = 0;
    pool_timer_at_ = absl::InfiniteFuture();
    RunPool();
  });
}

mm::MatchEvent QueueRuntime::QueuedEvent(const Ticket& t, uint64_t seq) const {
  mm::MatchEvent ev;
  ev.set_ticket_id(t.id);
  ev.set_seq(seq);
  *ev.mutable_time() = ToProtoTime(t.created);
  mm::Queued* q = ev.mutable_queued();
  q->set_queue(settings_.name);
  q->set_players_waiting(t.queued_players_waiting);
  *q->mutable_max_wait() = ToProtoDuration(settings_.rules.max_wait);
  return ev;
}

mm::MatchEvent QueueRuntime::SearchingEvent(Ticket& t) {
  const absl::Time now = runtime_->clock->Now();
  mm::MatchEvent ev;
  ev.set_ticket_id(t.id);
  ev.set_seq(++t.seq);
  *ev.mutable_time() = ToProtoTime(now);
  mm::Searching* s = ev.mutable_searching();
  // Sets the expected wait until `e.acceptable_at`; "about Ns" for the reason.
  auto expect = [&](const matcher::Explanation& e) {
    const absl::Duration in = std::max(*e.acceptable_at - now, absl::ZeroDuration());
    *s->mutable_expected_wait() = ToProtoDuration(in);
    return absl::FormatDuration(absl::Ceil(in, absl::Seconds(1)));
  };
  const matcher::Explanation e = pool_.Explain(t.key, now);
  // A partial lobby starts first: acceptable_at is its start, not the full
  // group's, which the reason then names without a time.
  const bool partial = e.partial_players > 0 && e.acceptable_at.has_value();
  *s->mutable_waited() = ToProtoDuration(e.waited);
  s->set_rating_window(settings_.rules.rated ? e.window : 0);
  s->set_players_waiting(static_cast<uint32_t>(e.players_waiting));
  switch (e.blocker) {
    case matcher::Blocker::kNone:
      s->set_reason("a match is being formed");
      break;
    case matcher::Blocker::kNotEnoughPlayers:
      s->set_blocked_by(mm::Searching::NOT_ENOUGH_PLAYERS);
      if (e.players_in_reach == e.players_waiting) {
        s->set_reason(absl::StrCat("waiting for players: ", e.players_waiting, " of the ",
                                   e.players_needed, " a match needs are here"));
      } else {
        // The others have other match attributes, share no region with it
        // or are kept apart by the custom rule.
        s->set_reason(absl::StrCat("waiting for players: ", e.players_in_reach, " of the ",
                                   e.players_needed, " a match needs can play with this ticket (",
                                   e.players_waiting, " in the queue)"));
      }
      break;
    case matcher::Blocker::kTeamPacking:
      s->set_blocked_by(mm::Searching::TEAM_PACKING);
      s->set_reason(absl::StrCat("the waiting parties cannot fill ", settings_.rules.team_count,
                                 " teams of ", settings_.rules.team_size, " yet"));
      break;
    case matcher::Blocker::kLatency: {
      s->set_blocked_by(mm::Searching::LATENCY);
      const std::string region = e.region >= 0 ? settings_.regions[e.region] : "any region";
      if (partial) {
        s->set_reason(absl::StrFormat(
            "the closest group's best region is %s with a worst latency of %.0f ms, over the "
            "limit of %.0f ms",
            region, e.worst_latency_ms, e.latency_limit_ms));
      } else if (e.acceptable_at.has_value()) {
        s->set_reason(absl::StrFormat(
            "the closest group's best region is %s with a worst latency of %.0f ms; the limit "
            "is %.0f ms now and covers it in about %s",
            region, e.worst_latency_ms, e.latency_limit_ms, expect(e)));
      } else {
        s->set_reason(absl::StrFormat(
            "the closest group's best region is %s with a worst latency of %.0f ms, more than "
            "this queue accepts; waiting for nearer players",
            region, e.worst_latency_ms));
      }
      break;
    }
    case matcher::Blocker::kCustomRule: {
      s->set_blocked_by(mm::Searching::CUSTOM_RULE);
      const std::string rule(settings_.rules.custom_rule->name());
      if (partial) {
        s->set_reason(absl::StrFormat(
            "the closest group spans %.0f rating and the %s rule adds %.0f",
            e.best_spread, rule, e.penalty));
      } else if (e.acceptable_at.has_value()) {
        s->set_reason(absl::StrFormat(
            "the closest group spans %.0f rating and the %s rule adds %.0f; the window covers "
            "it in about %s",
            e.best_spread, rule, e.penalty, expect(e)));
      } else {
        s->set_reason(absl::StrFormat(
            "the closest group spans %.0f rating and the %s rule adds %.0f, more than this "
            "queue accepts; waiting for other players",
            e.best_spread, rule, e.penalty));
      }
      break;
    }
    case matcher::Blocker::kRatingSpread:
      s->set_blocked_by(mm::Searching::RATING_SPREAD);
      if (partial) {
        s->set_reason(absl::StrFormat("the closest full group spans %.0f rating", e.best_spread));
      } else if (e.acceptable_at.has_value()) {
        s->set_reason(absl::StrFormat(
            "the closest group spans %.0f rating; the window at the group's mean wait covers "
            "it in about %s",
            e.best_spread, expect(e)));
      } else {
        s->set_reason(absl::StrFormat(
            "the closest group spans %.0f rating, wider than this queue accepts; waiting for "
            "closer players",
            e.best_spread));
      }
      break;
  }
  if (partial) {
    // No full match yet, but a partial lobby can start.
    s->set_reason(absl::StrCat(s->reason(), "; a lobby of ", e.partial_players,
                               " can start in about ", expect(e)));
  }
  return ev;
}

mm::Ticket QueueRuntime::ToProto(const Ticket& t) const {
  mm::Ticket out;
  out.set_ticket_id(t.id);
  out.set_queue(settings_.name);
  out.set_state(t.state);
  if (!t.match.empty()) {
    mm::Match match = t.match.Parse();
    const auto& team = match.teams(t.match_team).players();
    for (int i = t.match_first; i < t.match_first + t.party_size; ++i) {
      *out.add_players() = team.Get(i);
    }
    *out.mutable_match() = std::move(match);
  } else {
    *out.mutable_players() = t.players;
  }
  *out.mutable_created() = ToProtoTime(t.created);
  out.set_last_seq(t.seq);
  out.set_detail(t.detail);
  if ((t.state == mm::Ticket::QUEUED && t.poll && t.link == nullptr) ||
      t.state == mm::Ticket::DETACHED) {
    *out.mutable_expires() = ToProtoTime(t.lease_until);
  }
  return out;
}

}  // namespace matchd
