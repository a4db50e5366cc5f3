// SPDX-License-Identifier: MIT
// config_test.cc - porcupine.conf: the reader, $name expansion, bounds and
// cross-checks, -o overrides, the listings and the mapping onto CoreConfig.
#include "config/config.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include <unistd.h>

namespace porcupine::config {
namespace {

const std::string kFile = "porcupine.conf";

std::optional<Params> parse(std::string_view text, std::vector<Error>& errors,
                            const std::vector<std::string>& overrides = {}) {
  return parse_text(text, kFile, errors, overrides);
}

std::string dump(const std::vector<Error>& errors) {
  std::string out;
  for (const Error& e : errors) out += e.str() + "\n";
  return out;
}

bool has(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

// Parses text that must produce exactly one error; returns it.
Error only_error(std::string_view text) {
  std::vector<Error> errors;
  auto params = parse(text, errors);
  EXPECT_FALSE(params.has_value());
  EXPECT_EQ(errors.size(), 1u) << dump(errors);
  return errors.empty() ? Error{} : errors.front();
}

Params with_node(NodeId id) {
  Params p;
  p.node_id = id;
  return p;
}

// ---- Defaults -----------------------------------------------------------------

TEST(Config, OnlyNodeIdGivesEveryDefault) {
  std::vector<Error> errors;
  auto params = parse("node_id = 1\n", errors);
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_TRUE(errors.empty()) << dump(errors);
  EXPECT_EQ(*params, with_node(1));
  EXPECT_EQ(params->listen_address, (Address{"127.0.0.1", 7400}));
  EXPECT_TRUE(params->peers.empty());
  EXPECT_EQ(params->secret_file, "/etc/porcupine/secret");
  EXPECT_EQ(params->spool_directory, "/var/lib/porcupine/spool");
  EXPECT_EQ(params->redis_socket, "/run/porcupine/redis.sock");
  EXPECT_EQ(params->local_socket, "/run/porcupine/agent.sock");
  EXPECT_EQ(params->local_socket_group, "mail");
  EXPECT_EQ(params->death_certificate_ttl, 86400);
  EXPECT_EQ(params->log_to, "syslog");
  EXPECT_EQ(params->syslog_facility, "mail");
  EXPECT_TRUE(params->cluster_domains.empty());
}

TEST(Config, DefaultsOfCoreTunablesEqualCoreConfig) {
  const CoreConfig core = to_core(with_node(1));
  const CoreConfig want;
  // Fails to compile when CoreConfig gains or loses a field: map it in to_core
  // (and give it a parameter), then update this count.
  [[maybe_unused]] const auto& [f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17,
                                f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28, f29] = want;
  EXPECT_EQ(core.self, 1u);
  EXPECT_TRUE(core.seeds.empty());
  EXPECT_EQ(core.weight, want.weight);
  EXPECT_EQ(core.buckets, want.buckets);
  EXPECT_EQ(core.spread, want.spread);
  EXPECT_EQ(core.replicas, want.replicas);
  EXPECT_EQ(core.probe_interval, want.probe_interval);
  EXPECT_EQ(core.probe_timeout, want.probe_timeout);
  EXPECT_EQ(core.discovery_interval, want.discovery_interval);
  EXPECT_EQ(core.accept_window, want.accept_window);
  EXPECT_EQ(core.commit_timeout, want.commit_timeout);
  EXPECT_EQ(core.reconfig_backoff, want.reconfig_backoff);
  EXPECT_EQ(core.report_retry, want.report_retry);
  EXPECT_EQ(core.report_poll, want.report_poll);
  EXPECT_EQ(core.push_retry, want.push_retry);
  EXPECT_EQ(core.takeover_delay, want.takeover_delay);
  EXPECT_EQ(core.death_ttl, want.death_ttl);
  EXPECT_EQ(core.request_timeout, want.request_timeout);
  EXPECT_EQ(core.delivery_key_ttl, want.delivery_key_ttl);
  EXPECT_EQ(core.transfer_rate, want.transfer_rate);
  EXPECT_EQ(core.sync_interval, want.sync_interval);
  EXPECT_EQ(core.sync_bodies_inflight, want.sync_bodies_inflight);
  EXPECT_EQ(core.node_dead_timeout, want.node_dead_timeout);
  EXPECT_EQ(core.auth_failures_per_user, want.auth_failures_per_user);
  EXPECT_EQ(core.auth_failure_window, want.auth_failure_window);
  EXPECT_EQ(core.profile_memory_users, want.profile_memory_users);
  EXPECT_EQ(core.profile_memory_ttl, want.profile_memory_ttl);
  EXPECT_EQ(core.repair_inflight, want.repair_inflight);
  EXPECT_EQ(core.list_part, want.list_part);
}

TEST(Config, CommentsBlankLinesAndCrLfAreIgnored) {
  std::vector<Error> errors;
  auto params = parse("# porcupine.conf\r\n\r\n   # indented comment\nnode_id = 7\r\n\t\nspread=3\n", errors);
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_EQ(params->node_id, 7u);
  EXPECT_EQ(params->spread, 3u);
}

TEST(Config, HashAfterAValueIsPartOfTheValueAsInMainCf) {
  std::vector<Error> errors;
  auto params = parse("node_id = 1\nlocal_socket_group = mail # the group\n", errors);
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_EQ(params->local_socket_group, "mail # the group");
}

// ---- Errors, each at its line -----------------------------------------------------

TEST(ConfigErrors, UnknownParameterSuggestsTheClosestName) {
  Error e = only_error("node_id = 1\n\nprobe_intervall_ms = 500\n");
  EXPECT_EQ(e.file, kFile);
  EXPECT_EQ(e.line, 3);
  EXPECT_TRUE(has(e.message, "unknown parameter 'probe_intervall_ms'")) << e.message;
  EXPECT_TRUE(has(e.message, "did you mean 'probe_interval_ms'?")) << e.message;
}

TEST(ConfigErrors, UnknownParameterMissingItsUnitSuffixIsSuggested) {
  Error e = only_error("node_id = 1\nprobe_timeout = 5000\n");
  EXPECT_EQ(e.line, 2);
  EXPECT_TRUE(has(e.message, "did you mean 'probe_timeout_ms'?")) << e.message;
}

TEST(ConfigErrors, UnknownParameterFarFromEveryNameHasNoSuggestion) {
  Error e = only_error("node_id = 1\nmydestination = example.org\n");
  EXPECT_EQ(e.line, 2);
  EXPECT_TRUE(has(e.message, "unknown parameter 'mydestination'")) << e.message;
  EXPECT_FALSE(has(e.message, "did you mean")) << e.message;
}

TEST(ConfigErrors, NotANumberNamesTheParameterAndTheValue) {
  Error e = only_error("node_id = 1\nbuckets = many\n");
  EXPECT_EQ(e.line, 2);
  EXPECT_EQ(e.severity, Severity::kError);
  EXPECT_TRUE(has(e.message, "bad value for buckets = 'many'")) << e.message;
}

TEST(ConfigErrors, OutOfBoundsGivesTheAllowedRange) {
  Error e = only_error("node_id = 1\n\n\nbuckets = 8\n");
  EXPECT_EQ(e.line, 4);
  EXPECT_TRUE(has(e.message, "buckets = 8 is out of range")) << e.message;
  EXPECT_TRUE(has(e.message, "16..65536")) << e.message;

  e = only_error("node_id = 65536\n");
  EXPECT_EQ(e.line, 1);
  EXPECT_TRUE(has(e.message, "1..65535")) << e.message;

  e = only_error("node_id = 1\nprobe_interval_ms = 5\n");
  EXPECT_EQ(e.line, 2);
  EXPECT_TRUE(has(e.message, "10..60000 ms")) << e.message;

  e = only_error("node_id = 1\ndeath_certificate_ttl = 400d\n");
  EXPECT_TRUE(has(e.message, "1m..365d")) << e.message;

  e = only_error("node_id = 1\nnode_weight = 99999999999999999999999\n");
  EXPECT_TRUE(has(e.message, "out of range")) << e.message;
  EXPECT_TRUE(has(e.message, "1..100")) << e.message;
}

TEST(ConfigErrors, NegativeNumbersAreNotNumbers) {
  Error e = only_error("node_id = 1\nspread = -1\n");
  EXPECT_TRUE(has(e.message, "bad value for spread")) << e.message;
}

TEST(ConfigErrors, BadChoicePathAddressAndUnitAreExplained) {
  Error e = only_error("node_id = 1\nlog_to = file\n");
  EXPECT_EQ(e.line, 2);
  EXPECT_TRUE(has(e.message, "expected one of syslog | stderr")) << e.message;

  e = only_error("node_id = 1\nspool_directory = spool\n");
  EXPECT_TRUE(has(e.message, "absolute path")) << e.message;

  e = only_error("node_id = 1\nlisten_address = localhost\n");
  EXPECT_TRUE(has(e.message, "expected host:port")) << e.message;

  e = only_error("node_id = 1\nlisten_address = ::1:7400\n");
  EXPECT_TRUE(has(e.message, "brackets")) << e.message;

  e = only_error("node_id = 1\nlisten_address = 10.0.0.1:70000\n");
  EXPECT_TRUE(has(e.message, "1..65535")) << e.message;

  e = only_error("node_id = 1\ndeath_certificate_ttl = 5000ms\n");
  EXPECT_TRUE(has(e.message, "unit s, m, h or d")) << e.message;

  e = only_error("node_id = 1\nprobe_timeout_ms = 2 weeks\n");
  EXPECT_TRUE(has(e.message, "unit ms, s, m, h or d")) << e.message;
}

TEST(ConfigValues, SourceAddressIsAnIpAddressOrEmptyOrAny) {
  EXPECT_EQ(with_node(1).source_address, "");
  std::vector<Error> errors;
  for (const char* good : {"127.0.1.2", "::1", "any", ""}) {
    auto params = parse("node_id = 1\nsource_address = " + std::string(good) + "\n", errors);
    ASSERT_TRUE(params) << good << ": " << dump(errors);
    EXPECT_EQ(params->source_address, good);
  }
  Error e = only_error("node_id = 1\nsource_address = mail.example.com\n");
  EXPECT_EQ(e.line, 2);
  EXPECT_TRUE(has(e.message, "source_address") && has(e.message, "not an IP address")) << e.message;
  e = only_error("node_id = 1\nsource_address = 127.0.0.1:7400\n");
  EXPECT_TRUE(has(e.message, "not an IP address")) << e.message;
}

TEST(ConfigValues, MetricsListenIsOffByDefaultAndElseHostPort) {
  EXPECT_EQ(with_node(1).metrics_listen, "");
  std::vector<Error> errors;
  for (const char* good : {"127.0.0.1:9477", "[::1]:9477", "localhost:9477", "0.0.0.0:9477", ""}) {
    auto params = parse("node_id = 1\nmetrics_listen = " + std::string(good) + "\n", errors);
    ASSERT_TRUE(params) << good << ": " << dump(errors);
    EXPECT_EQ(params->metrics_listen, good);
  }
  Error e = only_error("node_id = 1\nmetrics_listen = 9477\n");
  EXPECT_EQ(e.line, 2);
  EXPECT_TRUE(has(e.message, "metrics_listen") && has(e.message, "expected host:port")) << e.message;
  e = only_error("node_id = 1\nmetrics_listen = ::1:9477\n");
  EXPECT_TRUE(has(e.message, "brackets")) << e.message;
  e = only_error("node_id = 1\nmetrics_listen = 127.0.0.1:0\n");
  EXPECT_TRUE(has(e.message, "1..65535")) << e.message;
}

TEST(ConfigErrors, MissingEqualsSign) {
  Error e = only_error("node_id = 1\nspread 3\n");
  EXPECT_EQ(e.line, 2);
  EXPECT_TRUE(has(e.message, "missing '='")) << e.message;
}

TEST(ConfigErrors, ContinuationWithoutAParameter) {
  std::vector<Error> errors;
  auto params = parse("# header\n  stray = 1\nnode_id = 1\n", errors);
  EXPECT_FALSE(params);
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_EQ(errors[0].line, 2);
  EXPECT_TRUE(has(errors[0].message, "whitespace")) << errors[0].message;
}

TEST(ConfigErrors, MissingNodeIdIsAnError) {
  Error e = only_error("spread = 3\n");
  EXPECT_EQ(e.file, kFile);
  EXPECT_EQ(e.line, 0);
  EXPECT_EQ(e.message, "missing mandatory parameter node_id");
  EXPECT_EQ(e.str(), "porcupine.conf: error: missing mandatory parameter node_id");
}

TEST(ConfigErrors, EmptyNodeIdIsMissing) {
  Error e = only_error("node_id =\n");
  EXPECT_EQ(e.message, "missing mandatory parameter node_id");
}

TEST(ConfigErrors, DuplicateKeyLastWinsWithAWarning) {
  std::vector<Error> errors;
  auto params = parse("node_id = 1\nspread = 3\n\nspread = 4\n", errors);
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_EQ(params->spread, 4u);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].severity, Severity::kWarning);
  EXPECT_EQ(errors[0].line, 4);
  EXPECT_TRUE(has(errors[0].message, "overriding earlier entry at line 2: spread = 3")) << errors[0].message;
  EXPECT_EQ(errors[0].str(), "porcupine.conf:4: warning: " + errors[0].message);
}

TEST(ConfigErrors, EveryMistakeOfAFileIsReportedAtOnce) {
  std::vector<Error> errors;
  auto params = parse("node_id = 1\nbuckets = 1\nfoo = bar\nlog_to = tty\n", errors);
  EXPECT_FALSE(params);
  ASSERT_EQ(errors.size(), 3u) << dump(errors);
  std::set<int> lines;
  for (const Error& e : errors) lines.insert(e.line);
  EXPECT_EQ(lines, (std::set<int>{2, 3, 4}));
}

TEST(ConfigErrors, ProbeTimeoutMustExceedProbeInterval) {
  Error e = only_error("node_id = 1\nprobe_interval_ms = 500\nprobe_timeout_ms = 500\n");
  EXPECT_EQ(e.line, 3);
  EXPECT_TRUE(has(e.message, "probe_timeout_ms (500) must be greater than probe_interval_ms (500)")) << e.message;

  // Only the interval is set: the error is on its line.
  e = only_error("node_id = 1\nprobe_interval_ms = 3s\n");
  EXPECT_EQ(e.line, 2);
}

TEST(ConfigErrors, ReplicationFactorMayExceedSpread) {
  std::vector<Error> errors;
  EXPECT_TRUE(parse("node_id = 1\nspread = 1\nreplication_factor = 3\n", errors)) << dump(errors);
}

TEST(ConfigErrors, PeersListingThisNodeElsewhereIsAnError) {
  Error e = only_error(
      "node_id = 2\nlisten_address = 10.0.0.2:7400\npeers = 1@10.0.0.1:7400 2@10.0.0.9:7400\n");
  EXPECT_EQ(e.line, 3);
  EXPECT_TRUE(has(e.message, "2@10.0.0.9:7400")) << e.message;
  EXPECT_TRUE(has(e.message, "10.0.0.2:7400")) << e.message;
}

TEST(ConfigErrors, PeersMayListThisNodeWithItsOwnAddress) {
  std::vector<Error> errors;
  auto params = parse("node_id = 2\nlisten_address = 10.0.0.2:7400\npeers = 1@10.0.0.1:7400, 2@10.0.0.2:7400\n",
                      errors);
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_EQ(params->peers.size(), 2u);
  EXPECT_EQ(to_core(*params).seeds, std::vector<NodeId>{1});

  // Listening on every address: only the port has to match.
  params = parse("node_id = 2\nlisten_address = 0.0.0.0:7400\npeers = 2@10.0.0.2:7400\n", errors);
  EXPECT_TRUE(params) << dump(errors);
  EXPECT_FALSE(parse("node_id = 2\nlisten_address = 0.0.0.0:7400\npeers = 2@10.0.0.2:7401\n", errors));
}

// Past 255 nodes: ids of 16 bits, for this node and its peers.
TEST(Config, NodeIdsAboveAByteAreAccepted) {
  std::vector<Error> errors;
  auto params = parse("node_id = 65535\nlisten_address = 10.0.1.2:7400\n"
                      "peers = 300@10.0.0.1:7400, 65535@10.0.1.2:7400, 1000@10.0.0.3:7400\n",
                      errors);
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_EQ(params->node_id, 65535u);
  const CoreConfig core = to_core(*params);
  EXPECT_EQ(core.self, 65535u);
  EXPECT_EQ(core.seeds, (std::vector<NodeId>{300, 1000}));
}

TEST(ConfigErrors, MalformedPeers) {
  Error e = only_error("node_id = 1\npeers = 2@10.0.0.2\n");
  EXPECT_EQ(e.line, 2);
  EXPECT_TRUE(has(e.message, "bad value for peers")) << e.message;

  e = only_error("node_id = 1\npeers = 10.0.0.2:7400\n");
  EXPECT_TRUE(has(e.message, "not id@host:port")) << e.message;

  e = only_error("node_id = 1\npeers = 0@10.0.0.2:7400\n");
  EXPECT_TRUE(has(e.message, "1..65535")) << e.message;

  e = only_error("node_id = 1\npeers = 2@10.0.0.2:7400 2@10.0.0.3:7400\n");
  EXPECT_TRUE(has(e.message, "node 2 is listed twice")) << e.message;

  e = only_error("node_id = 1\npeers = 2@10.0.0.2:7400 3@10.0.0.2:7400\n");
  EXPECT_TRUE(has(e.message, "same address")) << e.message;
}

TEST(ConfigErrors, LoadingAMissingFileSaysWhy) {
  std::vector<Error> errors;
  EXPECT_FALSE(load_file("/nonexistent/porcupine.conf", errors));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].file, "/nonexistent/porcupine.conf");
  EXPECT_TRUE(has(errors[0].message, "cannot open")) << errors[0].message;
}

// ---- Values ---------------------------------------------------------------------------

TEST(ConfigValues, ContinuationLinesJoinTheValue) {
  std::vector<Error> errors;
  auto params = parse(
      "node_id = 1\n"
      "peers = 1@127.0.0.1:7400,\n"
      "    2@10.0.0.2:7400\n"
      "# a comment inside the list\n"
      "\t3@[fd00::3]:7400\n"
      "cluster_domains = example.org\n"
      "  example.net, example.com\n",
      errors);
  ASSERT_TRUE(params) << dump(errors);
  ASSERT_EQ(params->peers.size(), 3u);
  EXPECT_EQ(params->peers[1], (Peer{2, {"10.0.0.2", 7400}}));
  EXPECT_EQ(params->peers[2], (Peer{3, {"fd00::3", 7400}}));
  EXPECT_EQ(params->peers[2].str(), "3@[fd00::3]:7400");
  EXPECT_EQ(params->cluster_domains, (std::vector<std::string>{"example.org", "example.net", "example.com"}));
}

TEST(ConfigValues, ErrorInAContinuedValueIsReportedAtItsFirstLine) {
  Error e = only_error("node_id = 1\npeers = 2@10.0.0.2:7400\n  3@nowhere\n");
  EXPECT_EQ(e.line, 2);
}

TEST(ConfigValues, TimesTakeUnits) {
  std::vector<Error> errors;
  auto params = parse(
      "node_id = 1\nprobe_timeout_ms = 3s\nrequest_timeout_ms = 2m\naccept_window_ms = 250ms\n"
      "death_certificate_ttl = 2h\ntakeover_delay_ms = 0\n",
      errors);
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_EQ(params->probe_timeout_ms, 3000);
  EXPECT_EQ(params->request_timeout_ms, 120000);
  EXPECT_EQ(params->accept_window_ms, 250);
  EXPECT_EQ(params->death_certificate_ttl, 7200);
  EXPECT_EQ(params->takeover_delay_ms, 0);
  EXPECT_EQ(to_core(*params).death_ttl, 7200 * 1000);

  params = parse("node_id = 1\ndeath_certificate_ttl = 90\n", errors);
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_EQ(params->death_certificate_ttl, 90);
}

// ---- $name expansion ---------------------------------------------------------------

TEST(ConfigExpansion, AllThreeFormsAndDefaults) {
  std::vector<Error> errors;
  auto params = parse(
      "node_id = 1\n"
      "local_socket = ${spool_directory}/agent.sock\n"  // refers to a later line
      "redis_socket = $(spool_directory)/redis.sock\n"
      "spool_directory = /srv/porcupine\n"
      "secret_file = $spool_directory/secret\n"
      "local_socket_group = $syslog_facility\n",  // a default
      errors);
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_TRUE(errors.empty()) << dump(errors);
  EXPECT_EQ(params->local_socket, "/srv/porcupine/agent.sock");
  EXPECT_EQ(params->redis_socket, "/srv/porcupine/redis.sock");
  EXPECT_EQ(params->secret_file, "/srv/porcupine/secret");
  EXPECT_EQ(params->local_socket_group, "mail");
}

TEST(ConfigExpansion, ChainsExpand) {
  std::vector<Error> errors;
  auto params = parse(
      "node_id = 1\nspool_directory = /srv\nredis_socket = $spool_directory/r\nlocal_socket = $redis_socket.x\n",
      errors);
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_EQ(params->local_socket, "/srv/r.x");
}

TEST(ConfigExpansion, DoubleDollarIsAPlainDollar) {
  std::vector<Error> errors;
  auto params = parse("node_id = 1\nlocal_socket_group = a$$b\n", errors);
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_EQ(params->local_socket_group, "a$b");
}

TEST(ConfigExpansion, LoopIsOneErrorNotAHang) {
  Error e = only_error("node_id = 1\nlocal_socket = $redis_socket\nredis_socket = $local_socket\n");
  EXPECT_EQ(e.line, 2);
  EXPECT_TRUE(has(e.message, "parameter expansion loop: local_socket -> redis_socket -> local_socket"))
      << e.message;

  e = only_error("node_id = 1\nlocal_socket_group = x$local_socket_group\n");
  EXPECT_EQ(e.line, 2);
  EXPECT_TRUE(has(e.message, "loop")) << e.message;
}

TEST(ConfigExpansion, UndefinedOrMalformedReferences) {
  Error e = only_error("node_id = 1\n\nlocal_socket = $spool_dir/agent.sock\n");
  EXPECT_EQ(e.line, 3);
  EXPECT_TRUE(has(e.message, "undefined parameter $spool_dir in the value of local_socket")) << e.message;
  EXPECT_TRUE(has(e.message, "did you mean 'spool_directory'?")) << e.message;

  e = only_error("node_id = 1\nlocal_socket = ${spool_directory/agent.sock\n");
  EXPECT_TRUE(has(e.message, "unterminated ${")) << e.message;

  e = only_error("node_id = 1\nlocal_socket_group = a$\n");
  EXPECT_TRUE(has(e.message, "write $$")) << e.message;

  e = only_error("node_id = 1\nlocal_socket_group = ${a b}\n");
  EXPECT_TRUE(has(e.message, "bad parameter reference")) << e.message;
}

TEST(ConfigExpansion, ErrorInAReferencedValueIsReportedOnce) {
  std::vector<Error> errors;
  EXPECT_FALSE(parse("node_id = 1\nspool_directory = $nothing\nlocal_socket = $spool_directory/a\n", errors));
  EXPECT_EQ(errors.size(), 1u) << dump(errors);
}

TEST(ConfigExpansion, ExpandedValueIsCheckedAgainstItsType) {
  // Both are relative, so both are wrong.
  std::vector<Error> errors;
  EXPECT_FALSE(parse("node_id = 1\nspool_directory = relative\nlocal_socket = $spool_directory/a\n", errors));
  EXPECT_EQ(errors.size(), 2u) << dump(errors);
}

// ---- -o overrides -------------------------------------------------------------------------

TEST(ConfigOverrides, OverridesReplaceTheFileBeforeExpansion) {
  std::vector<Error> errors;
  auto params = parse("node_id = 1\nspool_directory = /srv\nlocal_socket = $spool_directory/agent.sock\n", errors,
                      {"spool_directory=/tmp/p", "node_id = 4"});
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_TRUE(errors.empty()) << dump(errors);
  EXPECT_EQ(params->node_id, 4u);
  EXPECT_EQ(params->local_socket, "/tmp/p/agent.sock");
}

TEST(ConfigOverrides, OverrideSuppliesTheMandatoryNodeId) {
  std::vector<Error> errors;
  auto params = parse("spread = 3\n", errors, {"node_id=9"});
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_EQ(params->node_id, 9u);
}

TEST(ConfigOverrides, BadOverrideOfALoadIsReportedAsDashO) {
  std::vector<Error> errors;
  EXPECT_FALSE(parse("node_id = 1\n", errors, {"spred=3"}));
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_EQ(errors[0].file, "-o");
  EXPECT_TRUE(has(errors[0].message, "did you mean 'spread'?")) << errors[0].message;
}

TEST(ConfigOverrides, ApplyChangesLoadedParams) {
  Params params = with_node(1);
  std::vector<Error> errors;
  ASSERT_TRUE(apply_overrides(params,
                              {"spread=5", "log_to = stderr", "spool_directory=/x",
                               "local_socket=$spool_directory/s", "spread=6"},
                              errors))
      << dump(errors);
  EXPECT_TRUE(errors.empty());
  EXPECT_EQ(params.spread, 6u);
  EXPECT_EQ(params.log_to, "stderr");
  EXPECT_EQ(params.local_socket, "/x/s");
}

TEST(ConfigOverrides, ApplyOnDefaultsNeedsNodeId) {
  Params params;
  std::vector<Error> errors;
  EXPECT_FALSE(apply_overrides(params, {"spread=3"}, errors));
  EXPECT_EQ(errors.size(), 1u);
  EXPECT_TRUE(has(errors.back().message, "node_id")) << dump(errors);
  errors.clear();
  EXPECT_TRUE(apply_overrides(params, {"node_id=3"}, errors)) << dump(errors);
  EXPECT_EQ(params.node_id, 3u);
}

TEST(ConfigOverrides, AnyErrorLeavesParamsUnchanged) {
  const Params before = with_node(1);
  for (std::vector<std::string> bad : std::vector<std::vector<std::string>>{
           {"spread=3", "buckets=1"},
           {"spread=3", "nonsense=1"},
           {"spread=3", "no equals sign"},
           {"probe_timeout_ms=100"},
           {"local_socket=$nothing"},
           {"peers=1@10.9.9.9:1"}}) {
    Params params = before;
    std::vector<Error> errors;
    EXPECT_FALSE(apply_overrides(params, bad, errors)) << bad.front();
    EXPECT_FALSE(errors.empty());
    for (const Error& e : errors) EXPECT_EQ(e.file, "-o");
    EXPECT_EQ(params, before) << bad.front();
  }
}

// ---- Listings ---------------------------------------------------------------------------------

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string name_of(const std::string& line) { return line.substr(0, line.find(' ')); }

TEST(ConfigListings, PrintDefaultsHasEveryParameterOnceSorted) {
  auto lines = lines_of(print_defaults());
  ASSERT_EQ(lines.size(), parameters().size());
  std::vector<std::string> names;
  for (const auto& line : lines) names.push_back(name_of(line));
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  for (const Param& p : parameters())
    EXPECT_EQ(std::count(names.begin(), names.end(), std::string(p.name)), 1) << p.name;
  EXPECT_NE(std::find(lines.begin(), lines.end(), "buckets = 1024"), lines.end());
  EXPECT_NE(std::find(lines.begin(), lines.end(), "death_certificate_ttl = 1d"), lines.end());
  EXPECT_NE(std::find(lines.begin(), lines.end(), "node_id ="), lines.end());
  EXPECT_NE(std::find(lines.begin(), lines.end(), "peers ="), lines.end());
}

TEST(ConfigListings, PrintDefaultsParsesBackToTheDefaults) {
  std::vector<Error> errors;
  auto params = parse(print_defaults(), errors, {"node_id=1"});
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_TRUE(errors.empty()) << dump(errors);
  EXPECT_EQ(*params, with_node(1));
}

TEST(ConfigListings, PrintEffectiveRoundTrips) {
  std::vector<Error> errors;
  auto params = parse(
      "node_id = 3\nnode_weight = 2\nlisten_address = [::1]:7500\n"
      "peers = 1@10.0.0.1:7400 2@10.0.0.2:7400 3@[::1]:7500\n"
      "spool_directory = /srv/spool\nlocal_socket_group = a$$b\nbuckets = 4096\nspread = 3\n"
      "replication_factor = 3\nprobe_interval_ms = 300\nprobe_timeout_ms = 1s\n"
      "death_certificate_ttl = 90m\nlog_to = stderr\nsyslog_facility = local3\n"
      "cluster_domains = example.org example.net\n",
      errors);
  ASSERT_TRUE(params) << dump(errors);
  std::string text = print_effective(*params);
  EXPECT_TRUE(has(text, "death_certificate_ttl = 90m\n")) << text;
  EXPECT_TRUE(has(text, "peers = 1@10.0.0.1:7400, 2@10.0.0.2:7400, 3@[::1]:7500\n")) << text;
  EXPECT_TRUE(has(text, "local_socket_group = a$$b\n")) << text;
  EXPECT_EQ(lines_of(text).size(), parameters().size());
  auto again = parse(text, errors);
  ASSERT_TRUE(again) << dump(errors) << text;
  EXPECT_EQ(*again, *params);
}

TEST(ConfigListings, DocsTableHasARowPerParameter) {
  auto lines = lines_of(print_docs_markdown());
  ASSERT_EQ(lines.size(), parameters().size() + 2);
  EXPECT_EQ(lines[0], "| Parameter | Type | Default | Bounds | Description |");
  for (const Param& p : parameters()) {
    auto row = std::find_if(lines.begin(), lines.end(),
                            [&](const std::string& l) { return l.starts_with("| `" + std::string(p.name) + "` |"); });
    ASSERT_NE(row, lines.end()) << p.name;
    EXPECT_TRUE(has(*row, p.doc)) << *row;
  }
  EXPECT_NE(std::find(lines.begin(), lines.end(),
                      "| `buckets` | count | `1024` | 16..65536 | "
                      "Number of buckets in the user map; must be the same on every node of the cluster. |"),
            lines.end());
  EXPECT_TRUE(std::any_of(lines.begin(), lines.end(), [](const std::string& l) {
    return l.starts_with("| `log_to` | choice | `syslog` | syslog \\| stderr |");
  }));
}

TEST(ConfigListings, DocsPageHoldsTheGeneratedTable) {
  std::ifstream in(std::string(PORCUPINE_DOCS_DIR) + "/configuration.md");
  ASSERT_TRUE(in);
  std::stringstream page;
  page << in.rdbuf();
  EXPECT_TRUE(has(page.str(), print_docs_markdown()))
      << "docs/configuration.md is out of date: paste the output of porcupine-config-doc into it";
}

// ---- The core's tunables -------------------------------------------------------------------

TEST(ConfigCore, ToCoreMapsEveryValue) {
  std::vector<Error> errors;
  auto params = parse(
      "node_id = 5\nnode_weight = 3\nlisten_address = 10.0.0.5:7400\n"
      "peers = 1@10.0.0.1:7400, 5@10.0.0.5:7400, 9@10.0.0.9:7400\n"
      "buckets = 256\nspread = 4\nreplication_factor = 3\n"
      "probe_interval_ms = 101\nprobe_timeout_ms = 1002\ndiscovery_interval_ms = 1003\n"
      "accept_window_ms = 104\ncommit_timeout_ms = 1005\nreconfig_backoff_ms = 1006\n"
      "report_retry_ms = 1007\nreport_poll_ms = 1008\npush_retry_ms = 1009\n"
      "takeover_delay_ms = 1010\ndeath_certificate_ttl = 2d\nrequest_timeout_ms = 1011\n",
      errors);
  ASSERT_TRUE(params) << dump(errors);
  const CoreConfig c = to_core(*params);
  EXPECT_EQ(c.self, 5u);
  EXPECT_EQ(c.weight, 3u);
  EXPECT_EQ(c.seeds, (std::vector<NodeId>{1, 9}));
  EXPECT_EQ(c.buckets, 256u);
  EXPECT_EQ(c.spread, 4u);
  EXPECT_EQ(c.replicas, 3u);
  EXPECT_EQ(c.probe_interval, 101);
  EXPECT_EQ(c.probe_timeout, 1002);
  EXPECT_EQ(c.discovery_interval, 1003);
  EXPECT_EQ(c.accept_window, 104);
  EXPECT_EQ(c.commit_timeout, 1005);
  EXPECT_EQ(c.reconfig_backoff, 1006);
  EXPECT_EQ(c.report_retry, 1007);
  EXPECT_EQ(c.report_poll, 1008);
  EXPECT_EQ(c.push_retry, 1009);
  EXPECT_EQ(c.takeover_delay, 1010);
  EXPECT_EQ(c.death_ttl, 2LL * 86400 * 1000);
  EXPECT_EQ(c.request_timeout, 1011);
}

// ---- Sizes and the node cache ---------------------------------------------------------------

TEST(ConfigSizes, CacheDefaults) {
  const Params p = with_node(1);
  EXPECT_EQ(p.cache_size, std::int64_t{1} << 30);
  EXPECT_EQ(p.cache_dir, "");
  EXPECT_EQ(p.cache_entry_max, 0);
  EXPECT_EQ(p.cache_reserve_bytes, std::int64_t{2} << 30);
  auto lines = lines_of(print_defaults());
  EXPECT_NE(std::find(lines.begin(), lines.end(), "cache_size = 1G"), lines.end());
  EXPECT_NE(std::find(lines.begin(), lines.end(), "cache_dir ="), lines.end());
}

TEST(ConfigSizes, UnitsArePowersOf1024InAnyCase) {
  for (auto [text, bytes] : std::vector<std::pair<std::string, std::int64_t>>{
           {"0", 0},
           {"12345", 12345},
           {"100B", 100},
           {"64k", 64 << 10},
           {"64K", 64 << 10},
           {"64kB", 64 << 10},
           {"3M", 3 << 20},
           {"3mb", 3 << 20},
           {"2G", std::int64_t{2} << 30},
           {"1T", std::int64_t{1} << 40},
           {"64T", std::int64_t{64} << 40}}) {
    std::vector<Error> errors;
    auto params = parse("node_id = 1\ncache_size = " + text + "\n", errors);
    ASSERT_TRUE(params) << text << ": " << dump(errors);
    EXPECT_EQ(params->cache_size, bytes) << text;
  }
  EXPECT_TRUE(has(only_error("node_id = 1\ncache_size = 65T\n").message, "out of range; allowed: 0..64T"));
  EXPECT_TRUE(has(only_error("node_id = 1\ncache_size = 99999999999999999999\n").message, "out of range"));
  for (const char* bad : {"1.5G", "1 G", "G", "-1", "1P", "1Gi", "1GBB"})
    EXPECT_TRUE(has(only_error("node_id = 1\ncache_size = " + std::string(bad) + "\n").message,
                    "expected a number of bytes with an optional unit k, M, G or T"))
        << bad;
}

TEST(ConfigSizes, EffectiveListingWritesTheLargestUnitAndParsesBack) {
  std::vector<Error> errors;
  auto params = parse("node_id = 1\ncache_size = 3072M\ncache_entry_max = 1000\ncache_reserve_bytes = 1536k\n"
                      "cache_dir = /srv/cache\n",
                      errors);
  ASSERT_TRUE(params) << dump(errors);
  const std::string text = print_effective(*params);
  EXPECT_TRUE(has(text, "cache_size = 3G\n")) << text;
  EXPECT_TRUE(has(text, "cache_entry_max = 1000\n")) << text;
  EXPECT_TRUE(has(text, "cache_reserve_bytes = 1536k\n")) << text;
  auto again = parse(text, errors);
  ASSERT_TRUE(again) << dump(errors);
  EXPECT_EQ(*again, *params);
  auto lines = lines_of(print_docs_markdown());
  EXPECT_TRUE(std::any_of(lines.begin(), lines.end(), [](const std::string& l) {
    return l.starts_with("| `cache_size` | size | `1G` | 0..64T |");
  }));
}

TEST(ConfigSizes, CacheDirMustBeTheCachesOwn) {
  std::vector<Error> errors;
  auto params = parse("node_id = 1\nspool_directory = /srv/spool\ncache_dir = /srv/spool/cache\n", errors);
  ASSERT_TRUE(params) << dump(errors);
  params = parse("node_id = 1\ncache_dir = /var/cache/porcupine\n", errors);
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_TRUE(has(only_error("node_id = 1\ncache_dir = cache\n").message, "expected an absolute path"));
  for (const char* bad : {"/srv/spool", "/srv/spool/", "/srv", "/srv/spool/msg", "/srv/spool/msg/",
                          "/srv/spool/msg/x", "/srv/spool/./incoming", "/srv/spool/incoming/c"}) {
    Error e = only_error("node_id = 1\nspool_directory = /srv/spool\ncache_dir = " + std::string(bad) + "\n");
    EXPECT_EQ(e.line, 3) << bad;
    EXPECT_TRUE(has(e.message, "would hold the spool's bodies")) << bad << ": " << e.message;
  }
  // The spool set by -o counts as much as the file's.
  errors.clear();
  params = parse("node_id = 1\ncache_dir = /srv/c\n", errors, {"spool_directory=/srv/c/spool"});
  EXPECT_FALSE(params);
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_TRUE(has(errors[0].message, "would hold the spool's bodies")) << dump(errors);
}

TEST(ConfigFile, LoadFileReadsAFile) {
  char path[] = "/tmp/porcupine-config-test-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  {
    std::ofstream out(path);
    out << "node_id = 2\nspread = 5\nspread = 6\n";
  }
  std::vector<Error> errors;
  auto params = load_file(path, errors);
  std::remove(path);
  ASSERT_TRUE(params) << dump(errors);
  EXPECT_EQ(params->spread, 6u);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].file, path);
  EXPECT_EQ(errors[0].line, 3);
}

}  // namespace
}  // namespace porcupine::config
