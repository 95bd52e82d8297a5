"""The mutants: each a small, meaningful break of the product, and the tests that catch it.

A mutant replaces one exact piece of source (`old`, which must occur exactly once in
`file`) with `new`. `tests/meta/test_mutant_catalog.py` checks that every `old` is still there,
so moving code cannot silently retire a mutant.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    file: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]

    def apply(self, source: str) -> str:
        if source.count(self.old) != 1:
            raise ValueError(f"{self.name}: {self.file} holds its snippet "
                             f"{source.count(self.old)} times, not once")
        return source.replace(self.old, self.new)


MUTANTS: tuple[Mutant, ...] = (
    Mutant("hello_said_once", "an endpoint whose lost hello is never said again",
           "bus/endpoint.py",
           "await asyncio.wait_for(asyncio.shield(welcome), min(HELLO_RETRY_S, left))",
           "await asyncio.wait_for(asyncio.shield(welcome), left)",
           ("tests/bus/test_router_restart.py",)),
    Mutant("bucket_half_rate", "a token bucket that refills at half its rate",
           "bus/bucket.py",
           "self._tokens + (t - self._stamp) * self._rate)\n        self._stamp = t",
           "self._tokens + (t - self._stamp) * self._rate / 2)\n        self._stamp = t",
           ("tests/bus/test_bucket.py",)),
    Mutant("bucket_no_burst", "a token bucket whose burst never leaves at once",
           "bus/bucket.py",
           "self._tokens = float(burst)\n", "self._tokens = 0.0\n",
           ("tests/bus/test_bucket.py",)),
    Mutant("link_ignores_latency", "a link that delivers without its latency",
           "bus/link.py",
           "self._dispatch(item, depart + self._latency)", "self._dispatch(item, depart)",
           ("tests/bus/test_link.py", "tests/bus/test_vclock.py")),
    Mutant("link_no_priority", "control frames queue behind data",
           "bus/link.py",
           "        if item.control:\n            self._control.append(item)\n        else:\n"
           "            self._data.append(item)",
           "        if False:\n            self._control.append(item)\n        else:\n"
           "            self._data.append(item)",
           ("tests/bus/test_link.py", "tests/bus/test_router.py")),
    Mutant("link_never_pauses", "a full link never asks its senders to pause",
           "bus/link.py",
           "if self._queued > self._limit and item.sender is not None:",
           "if False and item.sender is not None:",
           ("tests/bus/test_link.py", "tests/bus/test_router.py")),
    Mutant("router_lets_spoofs_through", "the router forwards a frame whose src is not the "
           "connection's address",
           "bus/router.py",
           "        elif registered != ident:\n            self._drop(ident, \"spoofed_source\",",
           "        elif False:\n            self._drop(ident, \"spoofed_source\",",
           ("tests/bus/test_router.py",)),
    Mutant("sovereignty_leak", "a sovereignty check that lets raw frames out",
           "bus/router.py",
           "if origin in self._sovereign and target != origin:",
           "if origin in self._sovereign and target == origin:",
           ("tests/bus/test_sovereignty.py",)),
    Mutant("reliable_forgets_resend", "a reliable endpoint that forgets to resend on "
           "reconnect", "bus/endpoint_reliable.py",
           "await self._resend(list(self._log.all_kept()))", "await self._resend([])",
           ("tests/bus/test_router_restart.py",)),
    Mutant("ssp_off_by_one", "the SSP gate lets a worker run one clock further than S",
           "roles/ssp.py",
           "return self.min_clock >= clock - self.staleness",
           "return self.min_clock >= clock - self.staleness - 1",
           ("tests/roles/test_ssp.py", "tests/systems/test_ps.py")),
    Mutant("ps_applies_duplicates", "a PS shard applies a restarted worker's redone push "
           "again", "roles/ssp.py",
           "return 0 <= clock < self.clocks.get(worker, 0)", "return False",
           ("tests/systems/test_ps.py", "tests/roles/test_recovery.py")),
    Mutant("filter_drops", "the significance filter drops insignificant updates instead of "
           "accumulating them", "roles/significance.py",
           "            out[name] = self._take(acc, np.flatnonzero(mask))\n",
           "            out[name] = self._take(acc, np.flatnonzero(mask))\n"
           "            acc[...] = 0\n",
           ("tests/roles/test_significance.py", "tests/systems/test_gaia.py")),
    Mutant("filter_no_decay", "the significance threshold does not decay with the clock",
           "roles/significance.py",
           "return self.v / math.sqrt(max(1, clock))", "return self.v",
           ("tests/roles/test_significance.py", "tests/systems/test_filter_replay.py")),
    Mutant("mirror_clock_off_by_one", "the mirror clock lets a region run DS + 1 clocks "
           "ahead", "roles/significance.py",
           "return local_clock - self.slowest <= self.ds",
           "return local_clock - self.slowest <= self.ds + 1",
           ("tests/roles/test_significance.py", "tests/systems/test_gaia.py")),
    Mutant("barrier_never_sent", "the selective barrier is never sent",
           "roles/gaia/wire.py",
           "        if self.barrier != \"auto\":\n            return self.barrier == \"always\"",
           "        if self.barrier != \"auto\":\n            return False",
           ("tests/systems/test_gaia.py", "tests/systems/test_ps.py")),
    Mutant("barrier_auto_never", "the default barrier mode (auto) never sends a barrier, "
           "even behind a backlog", "roles/gaia/wire.py",
           "return backlog is not None and backlog.queued(asyncio.get_running_loop().time()) > 0",
           "return False",
           ("tests/systems/test_gaia.py",)),
    Mutant("fedavg_unweighted", "a FedAvg average that ignores the clients' sample counts",
           "roles/fedavg.py",
           "        acc.add(delta, samples)", "        acc.add(delta, 1)",
           ("tests/systems/test_fedavg.py",)),
    Mutant("fedavg_no_deadline", "the aggregator ignores its round deadline",
           "roles/fedavg.py", "deadline = loop.time() + self.config.deadline_s",
           "deadline = loop.time() + 1e9 * self.config.deadline_s",
           ("tests/systems/test_fedavg.py",)),
    Mutant("cost_without_egress", "the cost model forgets WAN egress",
           "tools/results.py",
           "egress += nbytes / 1e9 * topology.region(sender).egress_usd_per_gb",
           "egress += 0.0 * nbytes",
           ("tests/systems/test_results.py",)),
    Mutant("cost_receiver_pays", "egress is priced at the receiving region",
           "tools/results.py", "sender = name.split(\"->\")[0]", "sender = name.split(\"->\")[1]",
           ("tests/systems/test_results.py",)),
    Mutant("compare_target_wrong_run", "compare's target comes from the first system listed, "
           "not from LAN", "tools/compare.py",
           "order = [\"lan\"] + [s for s in order if s != \"lan\"]", "order = list(order)",
           ("tests/systems/test_compare.py",)),
    Mutant("mean_aggregation_sums", "--aggregation mean adds the workers' dense updates",
           "tools/ps_roles.py", "return 1.0 / len(pushing)", "return 1.0",
           ("tests/systems/test_gaia.py", "tests/systems/test_compare.py")),
    Mutant("yardstick_trusts_a_worse_lan", "compare builds a target on a LAN that got worse",
           "tools/compare.py", "    if last >= first:\n", "    if False:\n",
           ("tests/systems/test_compare.py",)),
    Mutant("refused_system_runs", "compare runs a system the topology cannot hold",
           "tools/compare.py", "order = [s for s in systems if s not in refused]",
           "order = list(systems)", ("tests/systems/test_compare.py",)),
    Mutant("late_loop_not_counted", "a link that hides the capacity a late event loop cost",
           "bus/link.py", "self.stats.late_s += bucket.overflow_s(now)",
           "self.stats.late_s += 0.0", ("tests/bus/test_router.py",)),
    Mutant("compare_no_slack", "compare gives the other systems only LAN's clocks",
           "tools/compare.py", "CLOCK_SLACK = 2", "CLOCK_SLACK = 1",
           ("tests/systems/test_compare.py",)),
    Mutant("time_to_target_strict", "time to target needs the objective strictly below it",
           "tools/results.py", "if row[\"objective\"] <= target:",
           "if row[\"objective\"] < target:",
           ("tests/systems/test_results.py", "tests/systems/test_ps.py")),
    Mutant("slow_region_no_wait", "a slow region does not wait for its machine",
           "roles/compute.py",
           "            self.charged_s += charge\n            await asyncio.sleep(charge)",
           "            self.charged_s += charge",
           ("tests/systems/test_vtime.py",)),
    Mutant("cartel_wrong_rows", "a Cartel peer exports the first rows of its model, not the "
           "asked classes' rows", "workloads/online.py",
           "rows = [self._index[c] for c in held]", "rows = list(range(len(held)))",
           ("tests/systems/test_cartel.py",)),
    Mutant("metadata_worst_neighbour", "the metadata service ranks the least similar peer "
           "first", "roles/metadata.py",
           "ranked.append((-len(knows), js_divergence(priors, basis),",
           "ranked.append((-len(knows), -js_divergence(priors, basis),",
           ("tests/systems/test_cartel.py",)),
    Mutant("drift_never_fires", "the DDM drift detector never reports a drift",
           "roles/drift.py", "if level > self.p_min + self.drift_level * self.s_min:",
           "if False:", ("tests/roles/test_drift.py",)),
    Mutant("frame_size_unchecked", "the frame decoder accepts a buffer of the wrong size",
           "bus/frame.py", "        if expected != size:", "        if expected < size:",
           ("tests/bus/test_frame.py",)),
    Mutant("launcher_no_parent_death", "children outlive a killed launcher",
           "tools/launch_child.py", "libc.prctl(1, signal.SIGKILL)", "libc.prctl(1, 0)",
           ("tests/deploy/test_launch.py::test_killing_the_launcher_takes_every_child_with_it",)),
    Mutant("launcher_no_grace", "stopping kills at once instead of SIGTERM, then SIGKILL "
           "after the grace", "tools/launch.py", "timeout=_STOP_GRACE_S)", "timeout=0)",
           ("tests/deploy/test_launch.py::test_stopping_sends_sigterm_then_sigkill_after_the_grace",)),
    Mutant("cartel_recall_ignored", "a peer asks only for classes it lacks, not for those it "
           "gets wrong", "roles/cartel.py",
           "and hits[mask].mean() < self.cartel.degraded_recall)",
           "and hits[mask].mean() < 0.0)", ("tests/systems/test_cartel.py",)),
    Mutant("cartel_fanout_ignored", "a transfer pulls from one neighbour whatever --fanout "
           "says", "roles/cartel.py", "\"k\": self.cartel.fanout})", "\"k\": 1})",
           ("tests/systems/test_cartel.py",)),
    Mutant("compare_target_share", "compare's target is 90% of LAN's improvement, not 98%",
           "tools/compare.py", "DEFAULT_TARGET_SHARE = 0.98", "DEFAULT_TARGET_SHARE = 0.9",
           ("tests/systems/test_compare.py",)),
    Mutant("seconds_doubled", "--seconds stops the run at twice the time asked",
           "tools/systems/harness.py",
           "loop.call_later(max(0.0, cfg.seconds - (loop.time() - t_start))",
           "loop.call_later(max(0.0, 2 * cfg.seconds - (loop.time() - t_start))",
           ("tests/systems/test_ps.py",)),
    Mutant("fedavg_client_samples_wrong", "a FedAvg client reports one sample, whatever its "
           "partition holds", "roles/fedavg.py", "        return self.part.size\n",
           "        return 1\n", ("tests/systems/test_fedavg.py",)),
    Mutant("sink_idle_crash", "a sink dies with its idle timeout instead of reporting",
           "roles/traffic.py",
           "        except TimeoutError:\n            report.idle_timeout = True",
           "        except ZeroDivisionError:\n            report.idle_timeout = True",
           ("tests/deploy/test_multiprocess.py::test_router_and_role_warn_of_plain_text_without_keys",)),
    Mutant("curve_goes_back", "the run's last row takes a clock below one already scored",
           "tools/systems/harness.py", "    clock = max(clock, monitor.evaluated)\n",
           "    clock = clock\n", ("tests/systems/test_harness.py",)),
    Mutant("torch_optimizer_forgotten", "a torch worker makes a new optimizer (and "
           "replica) every clock, losing its momentum", "workloads/torch_model.py",
           "            if key not in self._replicas:", "            if True:",
           ("tests/workloads/test_torch.py::"
            "test_a_pass_trains_a_replica_whose_optimizer_state_stays_with_its_worker",)),
    Mutant("torch_delta_not_applied_as_read", "a torch worker ignores the parameters it "
           "read and trains on from its own replica", "workloads/torch_model.py",
           "        self._load(params, trainable)\n        model.train()",
           "        model.train()",
           ("tests/systems/test_torch_systems.py::"
            "test_lan_with_one_worker_is_a_plain_torch_loop_bit_for_bit",)),
    Mutant("diloco_no_nesterov_lookahead", "the outer step uses the momentum buffer but "
           "not Nesterov's look-ahead", "roles/outer.py",
           "                grad = grad + self.momentum * buf\n",
           "                grad = buf\n", ("tests/systems/test_diloco.py",)),
    Mutant("diloco_inner_sum", "a region adds its workers' deltas instead of their mean",
           "roles/diloco.py", "    share = 1.0 / len(parts)\n", "    share = 1.0\n",
           ("tests/systems/test_diloco.py",)),
    Mutant("streaming_one_momentum_buffer", "the outer optimizer keeps one momentum buffer "
           "for all fragments", "roles/diloco_wire.py", 'key = f"fragment{fragment.index}"',
           'key = "fragments"', ("tests/systems/test_streaming_diloco.py",)),
    Mutant("streaming_overlap_replaces", "an overlapped result replaces the local fragment "
           "instead of mixing with it", "roles/streaming.py",
           "if not overlapped or mix == 0:", "if True:",
           ("tests/systems/test_streaming_diloco.py", "tests/roles/test_streaming_core.py")),
    Mutant("streaming_4bit_nibbles_swapped", "4-bit codes unpacked high nibble first",
           "roles/quantise.py", "both[0::2] = codes & 0x0F\n        both[1::2] = codes >> 4",
           "both[1::2] = codes & 0x0F\n        both[0::2] = codes >> 4",
           ("tests/roles/test_streaming_core.py",)),
    Mutant("diloco_hub_counts_one", "a diloco hub says its sum is of one region",
           "roles/diloco_average.py", '"scale": scale, "count": got.count})',
           '"scale": scale, "count": 1})', ("tests/systems/test_diloco_hubs.py",)),
    Mutant("diloco_a2a_leaves_itself_out", "an all-to-all region averages its peers' "
           "deltas without its own", "roles/diloco.py",
           "got = {self.ep.address: self._own}", "got = {}",
           ("tests/systems/test_diloco_hubs.py",)),
    Mutant("topk_codes_lose_residual", "topk's coded values drop what the codes lost "
           "instead of sending it later", "roles/coded_updates.py",
           "self.residual[table][idx] = carried[table][1] - vals",
           "self.residual[table][idx] = 0",
           ("tests/roles/test_coded_updates.py", "tests/systems/test_topk.py")),
    Mutant("topk_hub_never_last", "a hub's last combined update leaves its codes' residual "
           "behind", "roles/gaia/hub.py", "last=self._member_final == set(self.members))",
           "last=False)", ("tests/systems/test_topk.py",)),
    Mutant("topk_relay_drops_scales", "a hub relays a coded update without its scales",
           "roles/sparse_codec.py", 'ENCODING_FIELDS = ("tables", "enc", "bits", "scales")',
           'ENCODING_FIELDS = ("tables", "enc")', ("tests/systems/test_topk.py",)),
    Mutant("harden_takeover_allowed", "a hello for an address open on another connection "
           "takes it over", "bus/router_control.py",
           "            if self._still_connected(other, address):",
           "            if False:", ("tests/bus/test_harden.py",)),
    Mutant("harden_errors_not_relayed", "a refusal at a router further on stops at the "
           "router before it", "bus/router_peers.py",
           "                self._relay_error(header)  # about a frame from here or through here",
           "                pass", ("tests/bus/test_harden.py",)),
    Mutant("keys_not_bound", "any listed key may say hello as any address", "bus/security.py",
           "    if (region, kind) == (want_region, want_kind) and kind != TAP_KIND:",
           "    if True:", ("tests/bus/test_keys.py",)),
    Mutant("tap_key_on_the_bus", "an inspector key is let in on the bus socket, and a role's "
           "on the tap", "bus/security.py",
           "        if tap_key != (domain == TAP_DOMAIN):", "        if False:",
           ("tests/bus/test_keys.py",)),
    Mutant("lost_connection_uncounted", "a role cut off by ZeroMQ is neither found nor "
           "counted", "bus/router_watch.py", "                    loop.call_later(delay, "
           "self._find_lost)", "                    pass", ("tests/bus/test_corpus.py",)),
    Mutant("lda_counts_not_added_back", "the sampler forgets to count a token's new topic",
           "workloads/lda.py", "            np.add.at(nwk, (w, new), 1)\n", "\n",
           ("tests/workloads/test_lda.py", "tests/systems/test_lda.py")),
    Mutant("lda_fedavg_allowed", "fedavg averages count deltas", "tools/systems/fedavg.py",
           "    if counts_updates(cfg.workload):", "    if False:",
           ("tests/systems/test_lda.py",)),
    Mutant("hub_acks_before_checkpoint", "a checkpointing hub acknowledges a member's update "
           "before its checkpoint holds it", "roles/gaia/hub.py",
           "await self._acks.flush(self._send)  # with a checkpoint",
           "await self._acks.flush(self.ep)  # with a checkpoint",
           ("tests/roles/test_recovery.py::"
            "test_a_hub_restarted_from_its_checkpoint_loses_and_repeats_nothing",)),
    Mutant("hub_no_resend_after_restart", "a restarted hub does not resend what it kept",
           "roles/gaia/hub.py", "                await self.sender.resend(peer)\n",
           "                pass\n",
           ("tests/roles/test_recovery.py::"
            "test_a_hub_restarted_from_its_checkpoint_loses_and_repeats_nothing",)),
    Mutant("lm_not_causal", "the language model's attention sees the characters ahead",
           "workloads/torch_lm.py", "is_causal=True", "is_causal=False",
           ("tests/workloads/test_torch.py::test_the_language_model_is_causal",)),
    Mutant("topk_sends_the_smallest", "topk hands out the smallest accumulated updates "
           "instead of the largest", "roles/significance.py",
           "[flat.size - k:]) if k", "[:k]) if k", ("tests/systems/test_topk.py",)),
    Mutant("ray_placement_ignores_region", "Ray places a process's actor on any node, not "
           "one of its region", "tools/launch_ray.py",
           "resources={region_resource(region): _SLIVER}", "resources={}",
           ("tests/deploy/test_ray.py::"
            "test_gaia_with_hubs_on_ray_placed_by_region_and_exact_after_a_killed_hub",)),
    Mutant("ray_restart_without_resume", "an actor Ray restarts starts its role afresh "
           "instead of with --resume", "tools/launch_ray.py",
           'if kind == "router" else [*args, "--resume"])', 'if kind == "router" else args)',
           ("tests/deploy/test_ray.py::"
            "test_gaia_with_hubs_on_ray_placed_by_region_and_exact_after_a_killed_hub",)),
    Mutant("ray_ships_every_secret", "a Ray actor gets every secret key of the run, not only "
           "its own", "tools/launch_ray.py",
           'files[f"{keys}::secret/{secret.name}"] = secret.read_bytes()',
           'files.update({f"{keys}::secret/{f.name}": f.read_bytes() '
           'for f in secret.parent.iterdir()})',
           ("tests/deploy/test_ray.py::"
            "test_gaia_with_hubs_on_ray_placed_by_region_and_exact_after_a_killed_hub",)),
    Mutant("bucket_take_now_half_rate", "the token bucket's one-call fast path refills at "
           "half its rate", "bus/bucket.py",
           "tokens = self._tokens + (now - stamp) * rate\n",
           "tokens = self._tokens + (now - stamp) * rate / 2\n",
           ("tests/bus/test_bucket.py",)),
    Mutant("tap_batch_keeps_array_header", "a tap batch of 16 or more events keeps one byte "
           "of its msgpack array header", "bus/router_tap.py",
           "else packed[3:]", "else packed[2:]",
           ("tests/bus/test_router_tap.py", "tests/bus/test_router.py")),
    Mutant("fed_aggregator_keeps_old_model", "a fedavg aggregator process writes its initial "
           "model instead of the trained one", "tools/fed_roles.py",
           "np.savez(model_file(cfg.out), **aggregator.params)",
           "np.savez(model_file(cfg.out), **workload.init_params())",
           ("tests/deploy/test_launch.py::"
            "test_fedavg_as_processes_ends_with_the_all_in_one_model",)),
    Mutant("centralized_workers_skip_shipped", "a centralized worker process trains on its "
           "own region's records only, not on what was shipped", "tools/ship_roles.py",
           "partition_records([*own, *shipped]", "partition_records([*own]",
           ("tests/deploy/test_launch.py::"
            "test_centralized_as_processes_moves_the_raw_data_then_trains_at_home",)),
    Mutant("fed_client_ignores_trained", "a restarted fedavg client starts its passes over "
           "from the first instead of where the model's `trained` says", "roles/fedavg.py",
           "self._next_pass = trained * self.epochs * self.passes_per_epoch",
           "self._next_pass = self._next_pass",
           ("tests/deploy/test_launch.py::"
            "test_a_killed_fedavg_client_is_restarted_and_the_model_ends_as_all_in_one",)),
    Mutant("diloco_region_trains_on_every_region", "a diloco region process trains on "
           "every region's partitions, not its own workers'", "tools/diloco_roles.py",
           "[parts[key] for key in addresses.values() if key[0] == region]",
           "[parts[key] for key in addresses.values()]",
           ("tests/deploy/test_launch_diloco.py",)),
    Mutant("diloco_options_not_passed", "geoml launch hands the diloco roles none of its "
           "--diloco-* options", "tools/launch_config.py",
           'return self.diloco.args() if self.system == "diloco" else []', "return []",
           ("tests/deploy/test_launch_diloco.py::"
            "test_streaming_diloco_as_processes_ends_with_the_all_in_one_model",)),
    Mutant("cartel_peer_streams_site0", "every cartel peer process plays site 0's stream",
           "tools/cartel_roles.py", "stream = plan.streams[site]", "stream = plan.streams[0]",
           ("tests/deploy/test_launch_cartel.py::"
            "test_cartel_as_processes_transfers_across_them_and_writes_cartel_json",)),
    Mutant("edge_stop_at_first_done", "the edge coordinator stops every site when the first "
           "is done", "roles/edge_start.py",
           "if self.done.add(msg.src) and not self.stop.is_set():",
           "if not self.done.add(msg.src) or not self.stop.is_set():",
           ("tests/roles/test_edge_start.py",)),
    Mutant("memory_dealer_ignores_hwm", "a memory-transport DEALER sends however full "
           "the router's queue from it is", "bus/memory.py",
           "else self._queued < router.hwm)", "else True)",
           ("tests/bus/test_memory.py",)),
    Mutant("memory_handover_keeps_first", "a memory-transport ROUTER keeps the first "
           "connection of a routing id instead of the newest", "bus/memory.py",
           "self._connections[dealer.ident] = dealer  #",
           "self._connections.setdefault(dealer.ident, dealer)  #",
           ("tests/bus/test_memory.py",)),
    Mutant("memory_router_loses_the_sender", "a memory-transport ROUTER hands every "
           "message on with the first connection's routing id", "bus/memory.py",
           "return [dealer.ident_frame, *parts]",
           "return [next(iter(self._connections.values())).ident_frame, *parts]",
           ("tests/bus/test_router.py",)),
    Mutant("auto_transport_always_inproc", "transport auto picks inproc sockets even when "
           "they do not fit the open-files limit", "bus/network.py",
           "    if files_fit(sockets):\n", "    if True:\n",
           ("tests/bus/test_memory.py", "tests/systems/test_vtime.py")),
    Mutant("timestamp_scan_misses_ext8", "the header scan for a msgpack Timestamp misses "
           "its 12-byte (ext 8) encoding", "bus/frame.py",
           "return _TS4 in data or _TS8 in data or _TS12 in data",
           "return _TS4 in data or _TS8 in data",
           ("tests/bus/test_frame.py",)),
)
