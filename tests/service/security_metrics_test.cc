// TLS, mTLS, refusals at start and the Prometheus endpoint, against a real
// server.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "service/metrics.h"
#include "service/version.h"
#include "tests/testing/test_server.h"

namespace matchd::testing {
namespace {

namespace mm = ::matchmaking::v1;
using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A CA, a server certificate for "localhost" and a client certificate, made
// with the openssl command line in a fresh directory.
class Certificates {
 public:
  Certificates() {
    char tmpl[] = "/tmp/matchd_tls_XXXXXX";
    dir_ = mkdtemp(tmpl);
    const std::string script = R"sh(
set -e
cd "$0"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 \
  -subj "/CN=matchd test CA" 2>/dev/null
for who in server client; do
  openssl req -newkey rsa:2048 -nodes -keyout $who.key -out $who.csr -subj "/CN=localhost" \
    2>/dev/null
  printf "subjectAltName=DNS:localhost\n" > $who.ext
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem \
    -days 1 -extfile $who.ext 2>/dev/null
done
)sh";
    const std::string command = "bash -c '" + script + "' " + dir_;
    ok_ = std::system(command.c_str()) == 0;
  }
  ~Certificates() { std::system(("rm -rf " + dir_).c_str()); }
  bool ok() const { return ok_; }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  std::string pem(const std::string& name) const { return ReadFile(path(name)); }

 private:
  std::string dir_;
  bool ok_ = false;
};

grpc::Status ListQueues(mm::Matchmaker::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  mm::ListQueuesResponse response;
  return stub.ListQueues(&ctx, mm::ListQueuesRequest(), &response);
}

std::unique_ptr<mm::Matchmaker::Stub> StubWith(const std::string& address,
                                               std::shared_ptr<grpc::ChannelCredentials> creds) {
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  return mm::Matchmaker::NewStub(grpc::CreateCustomChannel(address, creds, args));
}

TEST(SecurityTest, TlsServesTlsClientsAndRefusesPlaintext) {
  Certificates certs;
  ASSERT_TRUE(certs.ok());
  TestServerOptions options;
  options.tls_cert_file = certs.path("server.pem");
  options.tls_key_file = certs.path("server.key");
  grpc::SslCredentialsOptions client;
  client.pem_root_certs = certs.pem("ca.pem");
  options.channel_credentials = grpc::SslCredentials(client);
  TestServer ts(options);
  EXPECT_TRUE(ListQueues(ts.stub()).ok());
  auto plain = StubWith(ts.address(), grpc::InsecureChannelCredentials());
  EXPECT_EQ(ListQueues(*plain).error_code(), grpc::StatusCode::UNAVAILABLE);
}

// A server that requires client certificates from the test CA, and a test
// client that has one.
TestServerOptions MutualTlsOptions(const Certificates& certs,
                                   absl::Duration refresh = absl::Seconds(60)) {
  TestServerOptions options;
  options.tls_cert_file = certs.path("server.pem");
  options.tls_key_file = certs.path("server.key");
  options.tls_client_ca_file = certs.path("ca.pem");
  options.tls_refresh = refresh;
  grpc::SslCredentialsOptions with_cert;
  with_cert.pem_root_certs = certs.pem("ca.pem");
  with_cert.pem_private_key = certs.pem("client.key");
  with_cert.pem_cert_chain = certs.pem("client.pem");
  options.channel_credentials = grpc::SslCredentials(with_cert);
  return options;
}

TEST(SecurityTest, MutualTlsRequiresAClientCertificateFromTheCa) {
  Certificates certs;
  ASSERT_TRUE(certs.ok());
  // Files watched (the default) and read once (--tls_refresh=0).
  for (absl::Duration refresh : {absl::Seconds(60), absl::ZeroDuration()}) {
    TestServer ts(MutualTlsOptions(certs, refresh));
    EXPECT_TRUE(ListQueues(ts.stub()).ok());
    grpc::SslCredentialsOptions without_cert;
    without_cert.pem_root_certs = certs.pem("ca.pem");
    auto anonymous = StubWith(ts.address(), grpc::SslCredentials(without_cert));
    EXPECT_EQ(ListQueues(*anonymous).error_code(), grpc::StatusCode::UNAVAILABLE);
  }
}

// matchctl's exit status for `queues` against `address` with `flags`.
int MatchctlQueues(const std::string& address, const std::string& flags) {
  const std::string command = std::string(MATCHCTL_PATH) + " --server " + address + " " + flags +
                              " queues >/dev/null 2>&1";
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(SecurityTest, MatchctlSpeaksTlsAndMutualTls) {
  Certificates certs;
  ASSERT_TRUE(certs.ok());
  TestServer ts(MutualTlsOptions(certs));
  // The certificate names localhost.
  const std::string address = "localhost:" + std::to_string(ts.server().port());
  const std::string ca = "--tls_ca " + certs.path("ca.pem");
  const std::string client =
      " --tls_cert " + certs.path("client.pem") + " --tls_key " + certs.path("client.key");
  EXPECT_EQ(MatchctlQueues(address, ca + client), 0);
  EXPECT_EQ(MatchctlQueues(address, ca), 1);  // no client certificate: refused
  EXPECT_EQ(MatchctlQueues(address, ""), 1);  // plaintext: refused
  EXPECT_EQ(MatchctlQueues(address, "--tls_cert " + certs.path("client.pem")), 2);  // usage
}

// A certificate renewed in place (as Kubernetes updates a mounted Secret) is
// served to new connections without a restart.
TEST(SecurityTest, ARenewedCertificateIsServedWithoutARestart) {
  Certificates first, second;  // each with its own CA
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(second.ok());
  char tmpl[] = "/tmp/matchd_tls_live_XXXXXX";
  const std::string live = mkdtemp(tmpl);
  // Replaces dir/name by rename, as the kubelet swaps a Secret's files.
  auto install = [&](const Certificates& from, const std::string& file, const std::string& name) {
    const std::string tmp = live + "/." + name;
    std::ofstream(tmp) << from.pem(file);
    return std::rename(tmp.c_str(), (live + "/" + name).c_str()) == 0;
  };
  ASSERT_TRUE(install(first, "server.pem", "tls.crt") && install(first, "server.key", "tls.key"));
  TestServerOptions options;
  options.tls_cert_file = live + "/tls.crt";
  options.tls_key_file = live + "/tls.key";
  options.tls_refresh = absl::Seconds(1);
  grpc::SslCredentialsOptions trusts_first, trusts_second;
  trusts_first.pem_root_certs = first.pem("ca.pem");
  trusts_second.pem_root_certs = second.pem("ca.pem");
  options.channel_credentials = grpc::SslCredentials(trusts_first);
  TestServer ts(options);
  // A fresh connection each time (StubWith uses a subchannel pool of its own).
  auto call = [&](const grpc::SslCredentialsOptions& trust) {
    return ListQueues(*StubWith(ts.address(), grpc::SslCredentials(trust))).error_code();
  };
  EXPECT_EQ(call(trusts_first), grpc::StatusCode::OK);
  EXPECT_EQ(call(trusts_second), grpc::StatusCode::UNAVAILABLE);

  ASSERT_TRUE(install(second, "server.key", "tls.key") && install(second, "server.pem", "tls.crt"));
  // The server reads the files again every second; give it up to 30.
  grpc::StatusCode renewed = grpc::StatusCode::UNAVAILABLE;
  for (const absl::Time end = absl::Now() + absl::Seconds(30);
       renewed != grpc::StatusCode::OK && absl::Now() < end;) {
    renewed = call(trusts_second);
  }
  EXPECT_EQ(renewed, grpc::StatusCode::OK);
  EXPECT_EQ(call(trusts_first), grpc::StatusCode::UNAVAILABLE);
  std::system(("rm -rf " + live).c_str());
}

TEST(SecurityTest, BadTlsFilesAreRefusedAtStart) {
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.queues = *ParseConfig(kTestConfig);
  options.tls_cert_file = "/nonexistent/cert.pem";
  options.tls_key_file = "/nonexistent/key.pem";
  auto server = MatchmakerServer::Start(std::move(options));
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("/nonexistent/cert.pem"));
}

// A port on 127.0.0.1 that this test listens on (without SO_REUSEPORT, so
// no one else can bind it).
class OccupiedPort {
 public:
  OccupiedPort() : fd_(socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 && listen(fd_, 1) == 0 &&
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port_ = ntohs(addr.sin_port);
    }
  }
  ~OccupiedPort() { close(fd_); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }

 private:
  const int fd_;
  int port_ = 0;
};

TEST(StartTest, AListenAddressInUseIsRefusedAtStart) {
  OccupiedPort taken;
  ASSERT_GT(taken.port(), 0);
  ServerOptions options;
  options.listen_address = taken.address();
  options.queues = *ParseConfig(kTestConfig);
  auto server = MatchmakerServer::Start(std::move(options));
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(server.status().message()),
              HasSubstr("cannot listen on " + taken.address()));
}

// Options that used to start a server which then misbehaved: a port taken
// modulo 65536, a heartbeat that floods a stream, a quota below what gRPC
// needs to answer at all, a thread per call.
TEST(StartTest, OptionsOutOfRangeAreRefusedAtStart) {
  struct Case {
    std::function<void(ServerOptions&)> set;
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](ServerOptions& o) { o.listen_address = "127.0.0.1:99999"; },
       "listen address must be host:port with a port in 0..65535 (0: any free port) or "
       "unix:PATH, got \"127.0.0.1:99999\""},
      {[](ServerOptions& o) { o.listen_address = "127.0.0.1"; }, "got \"127.0.0.1\""},
      {[](ServerOptions& o) { o.listen_address = "127.0.0.1:abc"; }, "got \"127.0.0.1:abc\""},
      {[](ServerOptions& o) { o.metrics_listen = "127.0.0.1:-1"; },
       "metrics address must be host:port with a port in 0..65535 (0: any free port), got"},
      {[](ServerOptions& o) { o.max_retained_bytes = -1; }, "max retained bytes must be >= 0"},
      {[](ServerOptions& o) { o.tls_refresh = absl::Milliseconds(1500); },
       "tls_refresh must be 0 (read once) or whole seconds from 1s to 1h, got 1.5s"},
      {[](ServerOptions& o) { o.tls_refresh = absl::Hours(2); },
       "tls_refresh must be 0 (read once) or whole seconds from 1s to 1h, got 2h"},
      {[](ServerOptions& o) { o.max_waiting_bytes = 1000; },
       "max waiting bytes must be >= 1048576 (1 MiB: room for the largest valid ticket), got 1000"},
      {[](ServerOptions& o) { o.threads = 2000; }, "threads must be in 0..256"},
      {[](ServerOptions& o) { o.heartbeat_interval = absl::Nanoseconds(1); },
       "heartbeat interval must be in [100ms, 1h], got 1ns"},
      {[](ServerOptions& o) { o.memory_quota_bytes = 1; },
       "memory quota must be 0 (none) or at least 1048576 bytes"},
      {[](ServerOptions& o) { o.max_connection_idle = absl::ZeroDuration(); },
       "max_connection_idle must be > 0"},
  };
  for (const Case& c : cases) {
    ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.queues = *ParseConfig(kTestConfig);
    c.set(options);
    auto server = MatchmakerServer::Start(std::move(options));
    ASSERT_FALSE(server.ok()) << c.message;
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(server.status().message()), HasSubstr(c.message));
  }
}

// Not even another matchd may share it (gRPC would allow SO_REUSEPORT).
TEST(StartTest, ASecondServerOnTheSamePortIsRefused) {
  TestServer first;
  ServerOptions options;
  options.listen_address = "127.0.0.1:" + std::to_string(first.server().port());
  options.queues = *ParseConfig(kTestConfig);
  auto second = MatchmakerServer::Start(std::move(options));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("cannot listen on"));
}

TEST(StartTest, AMetricsAddressInUseIsRefusedAtStart) {
  OccupiedPort taken;
  ASSERT_GT(taken.port(), 0);
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.metrics_listen = taken.address();
  options.queues = *ParseConfig(kTestConfig);
  auto server = MatchmakerServer::Start(std::move(options));
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(server.status().message()),
              HasSubstr("cannot serve metrics on " + taken.address()));
}

// GET http://127.0.0.1:port/path, the whole response.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, n);
    }
  }
  close(fd);
  return response;
}

// The value of the first sample of `name` whose labels contain every one of
// `labels`, or -1.
double Sample(const std::string& text, const std::string& name,
              const std::vector<std::string>& labels) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(name + "{", 0) != 0 && line.rfind(name + " ", 0) != 0) continue;
    bool all = true;
    for (const auto& l : labels) all = all && line.find(l) != std::string::npos;
    if (all) return std::stod(line.substr(line.rfind(' ') + 1));
  }
  return -1;
}

TEST(MetricsTest, PrometheusEndpointCountsTicketsMatchesAndRpcs) {
  TestServerOptions options;
  options.metrics_listen = "127.0.0.1:0";
  TestServer ts(options);
  ASSERT_GT(ts.server().metrics_port(), 0);
  auto alice = EventStream::Find(ts.stub(), "duel", {MakePlayer("alice", 1500)});
  auto bob = EventStream::Find(ts.stub(), "duel", {MakePlayer("bob", 1540)});
  ASSERT_TRUE(alice->Finish().ok());
  ASSERT_TRUE(bob->Finish().ok());
  auto carol = EventStream::Find(ts.stub(), "duel", {MakePlayer("carol", 1500)});
  ASSERT_TRUE(carol->Expect().has_queued());
  EXPECT_EQ(EventStream::Find(ts.stub(), "nope", {MakePlayer("x")})->Finish().error_code(),
            grpc::StatusCode::NOT_FOUND);

  const std::string text = HttpGet(ts.server().metrics_port(), "/metrics");
  ASSERT_THAT(text, HasSubstr("200 OK"));
  const std::string duel = "queue=\"duel\"";
  EXPECT_EQ(Sample(text, "matchd_tickets_created_total", {duel}), 3);
  EXPECT_EQ(Sample(text, "matchd_matches_total", {duel}), 1);
  EXPECT_EQ(Sample(text, "matchd_tickets_ended_total", {duel, "outcome=\"matched\""}), 2);
  EXPECT_EQ(Sample(text, "matchd_tickets_waiting", {duel}), 1);
  EXPECT_EQ(Sample(text, "matchd_ticket_wait_seconds_count", {duel}), 2);
  EXPECT_EQ(Sample(text, "matchd_match_rating_spread_sum", {duel}), 40);
  EXPECT_EQ(Sample(text, "matchd_match_rating_spread_bucket", {duel, "le=\"0\""}), 0);
  EXPECT_EQ(Sample(text, "matchd_match_rating_spread_bucket", {duel, "le=\"50\""}), 1);
  EXPECT_EQ(Sample(text, "matchd_queue_max_wait_seconds", {duel}), 60);
  EXPECT_EQ(Sample(text, "matchd_rpcs_total", {"method=\"FindMatch\"", "code=\"OK\""}), 2);
  EXPECT_EQ(Sample(text, "matchd_rpcs_total", {"method=\"FindMatch\"", "code=\"NOT_FOUND\""}),
            1);
  EXPECT_THAT(text, HasSubstr("matchd_event_loop_lag_seconds_bucket{"));
  // Carol's party is the one waiting: counted at twice its serialized size.
  EXPECT_EQ(Sample(text, "matchd_waiting_party_bytes", {}),
            2 * static_cast<double>(MakePlayer("carol", 1500).ByteSizeLong()));
  EXPECT_EQ(Sample(text, "matchd_waiting_party_bytes_limit", {}), double{int64_t{1} << 30});
  EXPECT_EQ(Sample(text, "matchd_build_info",
                   {"version=\"" + std::string(Version()) + "\"",
                    "grpc_version=\"" + GrpcVersion() + "\""}),
            1);
}

// The metric of `family` in `families` whose labels include all of `labels`.
const prometheus::ClientMetric* Find(const std::vector<prometheus::MetricFamily>& families,
                                     const std::string& family,
                                     const std::vector<prometheus::ClientMetric::Label>& labels) {
  for (const auto& f : families) {
    if (f.name != family) continue;
    for (const auto& m : f.metric) {
      bool all = true;
      for (const auto& l : labels) {
        all = all && std::find(m.label.begin(), m.label.end(), l) != m.label.end();
      }
      if (all) return &m;
    }
  }
  return nullptr;
}

TEST(MetricsTest, EachLoopCountsItsOwnRpcsAndACollectSumsThem) {
  Metrics metrics({"duel"}, 2, kMinWaitingBytes);
  constexpr int kPerLoop = 20000;
  std::atomic<bool> writing{true};
  // A scrape while the loops write: each sum only grows (and TSan checks the
  // reads against the writes).
  std::thread scraper([&] {
    double last = 0;
    while (writing.load()) {
      const auto families = metrics.Collect();
      const auto* ok =
          Find(families, "matchd_rpcs_total", {{"method", "FindMatch"}, {"code", "OK"}});
      ASSERT_NE(ok, nullptr);
      EXPECT_GE(ok->counter.value, last);
      last = ok->counter.value;
    }
  });
  std::vector<std::thread> loops;
  for (int loop = 0; loop < 2; ++loop) {
    loops.emplace_back([&metrics, loop] {
      for (int i = 0; i < kPerLoop; ++i) {
        metrics.RecordRpc(loop, Rpc::kFindMatch, grpc::StatusCode::OK);
      }
      metrics.RecordRpc(loop, Rpc::kCancelTicket, grpc::StatusCode::NOT_FOUND);
    });
  }
  for (auto& t : loops) t.join();
  writing = false;
  scraper.join();

  const auto families = metrics.Collect();
  const auto* ok = Find(families, "matchd_rpcs_total", {{"method", "FindMatch"}, {"code", "OK"}});
  ASSERT_NE(ok, nullptr);
  EXPECT_EQ(ok->counter.value, 2 * kPerLoop);
  const auto* not_found =
      Find(families, "matchd_rpcs_total", {{"method", "CancelTicket"}, {"code", "NOT_FOUND"}});
  ASSERT_NE(not_found, nullptr);
  EXPECT_EQ(not_found->counter.value, 2);
  // Every method and code is exported, at zero too.
  const auto* unused =
      Find(families, "matchd_rpcs_total", {{"method", "WatchTicket"}, {"code", "UNAUTHENTICATED"}});
  ASSERT_NE(unused, nullptr);
  EXPECT_EQ(unused->counter.value, 0);
}

TEST(MetricsTest, HistogramBucketsAreCumulativeAndEndWithInf) {
  Metrics metrics({"duel", "team"}, 1, kMinWaitingBytes);
  Metrics::Queue& team = metrics.queue(1);
  team.wait_seconds.Observe(0.01);   // on the first bound: in it (le="0.01")
  team.wait_seconds.Observe(0.011);  // the second bucket
  team.wait_seconds.Observe(5);      // on the bound 5
  team.wait_seconds.Observe(1e6);    // above the last bound: +Inf only
  const auto families = metrics.Collect();
  const auto* wait = Find(families, "matchd_ticket_wait_seconds", {{"queue", "team"}});
  ASSERT_NE(wait, nullptr);
  const auto& h = wait->histogram;
  EXPECT_EQ(h.sample_count, 4u);
  EXPECT_DOUBLE_EQ(h.sample_sum, 0.01 + 0.011 + 5 + 1e6);
  ASSERT_EQ(h.bucket.size(), 16u);  // 15 bounds and +Inf
  EXPECT_EQ(h.bucket[0].upper_bound, 0.01);
  EXPECT_EQ(h.bucket[0].cumulative_count, 1u);
  EXPECT_EQ(h.bucket[1].cumulative_count, 2u);
  EXPECT_EQ(h.bucket[6].upper_bound, 2);
  EXPECT_EQ(h.bucket[6].cumulative_count, 2u);
  EXPECT_EQ(h.bucket[7].upper_bound, 5);
  EXPECT_EQ(h.bucket[7].cumulative_count, 3u);
  EXPECT_EQ(h.bucket[14].cumulative_count, 3u);
  EXPECT_TRUE(std::isinf(h.bucket[15].upper_bound));
  EXPECT_EQ(h.bucket[15].cumulative_count, 4u);
  // The other queue's series are its own.
  const auto* duel = Find(families, "matchd_ticket_wait_seconds", {{"queue", "duel"}});
  ASSERT_NE(duel, nullptr);
  EXPECT_EQ(duel->histogram.sample_count, 0u);
}

}  // namespace
}  // namespace matchd::testing
