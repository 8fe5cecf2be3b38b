// Checks matchd's rendered Kubernetes manifests and its Dockerfile, offline.
// Run by tests/k8s/validate.sh, which renders the kustomizations first:
//
//   node tests/k8s/validate.mjs --repo DIR --rendered DIR [--compare DIR] [--flags FILE]
//
// --rendered holds one NAME.yaml per kustomization (base, dev, prod);
// --compare, the same rendered by another kustomize version; --flags, the
// flags the matchd binary knows (one a line). Every
// object is checked three ways:
//   1. schema: kubernetes-models' validators (types, enums, quantities,
//      required fields);
//   2. unknown fields: the objects as TypeScript literals of kubernetes-models'
//      interfaces, type-checked with `tsc --strict` (excess properties are
//      errors there, and only there);
//   3. policy: what matchd needs to run and drain well (below, `policy*`).
// The Dockerfile is checked with dockerfile-utils (syntax) and parsed with
// dockerfile-ast for its own rules. Prints every problem; exits 1 if any.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import { DockerfileParser } from "dockerfile-ast";
import { validate as validateDockerfile } from "dockerfile-utils";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const repo = path.resolve(args.repo ?? path.join(here, "../.."));
const renderedDir = args.rendered;
if (!renderedDir) {
  console.error("usage: node validate.mjs --repo DIR --rendered DIR [--compare DIR] [--flags FILE]");
  process.exit(2);
}

const problems = [];
let checks = 0;
function check(ok, where, message) {
  checks++;
  if (!ok) problems.push(`${where}: ${message}`);
  return ok;
}

// ---------------------------------------------------------------- helpers

const GRPC_PORT = 50051;
const METRICS_PORT = 9090;
const UID = 65532;
const BYTES_PER_TICKET = 15 * 1024;

// A Kubernetes quantity as a number (CPUs or bytes).
function quantity(q) {
  const m = String(q).match(/^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$/);
  if (!m) return NaN;
  const unit = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };
  return Number(m[1]) * (m[2] ? unit[m[2]] : 1);
}

// An absl duration flag value ("5s", "1m30s", "500ms") in seconds.
function seconds(d) {
  let total = 0;
  const re = /([0-9.]+)(ms|us|ns|h|m|s)/g;
  let m;
  let consumed = "";
  while ((m = re.exec(d))) {
    total += Number(m[1]) * { h: 3600, m: 60, s: 1, ms: 1e-3, us: 1e-6, ns: 1e-9 }[m[2]];
    consumed += m[0];
  }
  return consumed === d ? total : NaN;
}

// --flag=value and --flag value forms.
function flags(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) continue;
    const eq = a.indexOf("=");
    if (eq > 0) out[a.slice(2, eq)] = a.slice(eq + 1);
    else out[a.slice(2)] = argv[i + 1] && !argv[i + 1].startsWith("--") ? argv[++i] : "true";
  }
  return out;
}

// The flags the matchd binary knows (--flags FILE, from its --help).
const knownFlags = args.flags ? new Set(fs.readFileSync(args.flags, "utf8").split("\n").filter(Boolean)) : null;
function checkFlagsKnown(where, argv) {
  if (!knownFlags) return;
  for (const a of argv) {
    const m = a.match(/^--([^=]+)/);
    if (m) check(knownFlags.has(m[1]), where, `matchd has no flag --${m[1]}`);
  }
}

const subset = (sel, labels) => sel && Object.keys(sel).length > 0 && Object.entries(sel).every(([k, v]) => labels?.[k] === v);
const id = (o) => `${o.kind}/${o.metadata?.name}`;

// ---------------------------------------------------------------- load

function load(dir) {
  const out = {};
  for (const file of fs.readdirSync(dir).filter((f) => f.endsWith(".yaml")).sort()) {
    const name = file.replace(/\.yaml$/, "");
    const objects = [];
    for (const doc of parseAllDocuments(fs.readFileSync(path.join(dir, file), "utf8"))) {
      if (doc.errors.length) {
        check(false, name, `rendered YAML does not parse: ${doc.errors[0].message}`);
        continue;
      }
      const o = doc.toJS();
      if (o) objects.push(o);
    }
    out[name] = objects;
  }
  return out;
}
const renders = load(renderedDir);

// The same kustomizations rendered by another kustomize must give the same
// objects, up to their order and the generated ConfigMap's hash suffix (each
// kustomize version hashes differently).
if (args.compare) {
  const canonical = (objects) => {
    const sortKeys = (v) => Array.isArray(v) ? v.map(sortKeys)
      : v && typeof v === "object" ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])])) : v;
    return objects.map((o) => JSON.stringify(sortKeys(o)).replace(/matchd-config-[a-z0-9]{10}/g, "matchd-config-HASH")).sort();
  };
  const other = load(args.compare);
  for (const [name, objects] of Object.entries(renders)) {
    const a = canonical(objects);
    const b = canonical(other[name] ?? []);
    const onlyA = a.filter((x) => !b.includes(x)).map((x) => JSON.parse(x)).map(id);
    const onlyB = b.filter((x) => !a.includes(x)).map((x) => JSON.parse(x)).map(id);
    check(onlyA.length === 0 && onlyB.length === 0, name,
      `the two kustomize versions render differently: ${[...onlyA.map((x) => `${x} (first)`), ...onlyB.map((x) => `${x} (second)`)].join(", ")}`);
  }
}
check(["base", "dev", "prod"].every((n) => renders[n]?.length), "render", `expected base, dev and prod renderings, got ${Object.keys(renders).join(", ")}`);

// ---------------------------------------------------------------- 1. schema

async function modelFor(o) {
  const mod = await import(`kubernetes-models/${o.apiVersion}/${o.kind}`).catch(() => null);
  return mod?.[o.kind];
}

for (const [name, objects] of Object.entries(renders)) {
  for (const o of objects) {
    const Model = await modelFor(o);
    if (!check(Model, `${name} ${id(o)}`, `unknown apiVersion/kind ${o.apiVersion} ${o.kind}`)) continue;
    try {
      new Model(o).validate();
      checks++;
    } catch (e) {
      check(false, `${name} ${id(o)}`, `schema: ${e.message}`);
    }
  }
}

// ---------------------------------------------------------------- 2. unknown fields

{
  const dir = path.join(here, ".cache", "typecheck");
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, "objects.ts");
  const lines = [];
  const spans = []; // [firstLine, lastLine, label]
  const imports = new Set();
  let n = 0;
  for (const [name, objects] of Object.entries(renders)) {
    for (const o of objects) {
      const type = `I${o.kind}`;
      const alias = `${type}_${o.apiVersion.replace(/[^A-Za-z0-9]/g, "_")}`;
      imports.add(`import type { ${type} as ${alias} } from "kubernetes-models/${o.apiVersion}/${o.kind}";`);
      const body = JSON.stringify(o, null, 2).split("\n");
      const first = lines.length + 1;
      lines.push(`export const o${n++}: ${alias} = ${body[0]}`, ...body.slice(1));
      lines[lines.length - 1] += ";";
      spans.push([first, lines.length, `${name} ${id(o)}`]);
    }
  }
  const header = [...imports];
  fs.writeFileSync(file, [...header, ...lines].join("\n") + "\n");
  const tsc = path.join(here, "node_modules", "typescript", "bin", "tsc");
  let out = "";
  try {
    execFileSync(process.execPath, [tsc, "--noEmit", "--strict", "--skipLibCheck", "--target", "es2022",
      "--module", "esnext", "--moduleResolution", "bundler", file], { encoding: "utf8" });
  } catch (e) {
    out = `${e.stdout ?? ""}${e.stderr ?? ""}`;
  }
  checks++;
  for (const m of out.matchAll(/objects\.ts\((\d+),\d+\): error (TS\d+: .*)/g)) {
    const line = Number(m[1]) - header.length;
    const span = spans.find(([a, b]) => line >= a && line <= b);
    problems.push(`${span ? span[2] : "typecheck"}: ${m[2]}`);
  }
  if (out && !/objects\.ts\(/.test(out)) problems.push(`typecheck: tsc failed: ${out.trim()}`);
}

// ---------------------------------------------------------------- 3. policy

function policy(name, objects) {
  const where = (o) => `${name} ${id(o)}`;
  const of = (kind) => objects.filter((o) => o.kind === kind);
  const deployments = of("Deployment");
  if (!check(deployments.length === 1, name, `expected one Deployment, found ${deployments.length}`)) return;
  const d = deployments[0];
  const w = where(d);
  const pod = d.spec?.template?.spec ?? {};
  const podLabels = d.spec?.template?.metadata?.labels ?? {};
  const c = (pod.containers ?? []).find((x) => x.name === "matchd");
  if (!check(c, w, "no container named matchd")) return;
  const f = flags([...(c.command ?? []), ...(c.args ?? [])]);
  checkFlagsKnown(w, c.args ?? []);

  // Labels and selectors.
  for (const o of objects) {
    const labels = o.metadata?.labels ?? {};
    check(labels["app.kubernetes.io/name"] === "matchd" && labels["app.kubernetes.io/instance"],
      where(o), "needs the labels app.kubernetes.io/name=matchd and app.kubernetes.io/instance");
    if (name !== "base") check(o.metadata?.namespace, where(o), "no namespace set by the overlay");
  }
  check(subset(d.spec?.selector?.matchLabels, podLabels), w, "spec.selector.matchLabels does not match the pod template's labels");
  for (const s of of("Service")) check(subset(s.spec?.selector, podLabels), where(s), "selector does not match the pod labels");
  for (const p of of("PodDisruptionBudget")) check(subset(p.spec?.selector?.matchLabels, podLabels), where(p), "selector does not match the pod labels");
  for (const p of of("NetworkPolicy")) check(subset(p.spec?.podSelector?.matchLabels, podLabels), where(p), "podSelector does not match the pod labels");
  for (const t of pod.topologySpreadConstraints ?? []) check(subset(t.labelSelector?.matchLabels, podLabels), w, `topology spread on ${t.topologyKey}: labelSelector does not match the pod labels`);
  check((pod.topologySpreadConstraints ?? []).length > 0, w, "no topologySpreadConstraints");

  // Security.
  const psc = pod.securityContext ?? {};
  const csc = c.securityContext ?? {};
  check((csc.runAsNonRoot ?? psc.runAsNonRoot) === true, w, "runAsNonRoot is not true");
  check((csc.runAsUser ?? psc.runAsUser) === UID, w, `runAsUser is not ${UID}`);
  check((csc.runAsGroup ?? psc.runAsGroup) === UID, w, `runAsGroup is not ${UID}`);
  check(csc.readOnlyRootFilesystem === true, w, "readOnlyRootFilesystem is not true");
  check(csc.allowPrivilegeEscalation === false, w, "allowPrivilegeEscalation is not false");
  check(csc.privileged !== true, w, "privileged");
  check((csc.capabilities?.drop ?? []).includes("ALL"), w, "capabilities.drop lacks ALL");
  check(!(csc.capabilities?.add ?? []).length, w, "capabilities are added");
  check((csc.seccompProfile ?? psc.seccompProfile)?.type === "RuntimeDefault", w, "seccompProfile is not RuntimeDefault");
  check(pod.automountServiceAccountToken === false, w, "automountServiceAccountToken is not false");
  check(!pod.hostNetwork && !pod.hostPID && !pod.hostIPC, w, "uses host namespaces");
  const sa = of("ServiceAccount").find((s) => s.metadata.name === (pod.serviceAccountName ?? "default"));
  check(sa && sa.automountServiceAccountToken === false, w, `ServiceAccount ${pod.serviceAccountName} missing or mounts its token`);

  // Image.
  const image = c.image ?? "";
  const tag = image.includes("@") ? "digest" : image.split("/").pop().split(":")[1];
  check(tag && tag !== "latest", w, `image "${image}" must carry a tag other than latest, or a digest`);
  if (name === "prod") check(image.includes("/"), w, `prod image "${image}" should name a registry`);

  // Ports and the flags that bind them.
  const ports = Object.fromEntries((c.ports ?? []).map((p) => [p.name, p.containerPort]));
  check(ports.grpc === GRPC_PORT, w, `container port grpc is ${ports.grpc}, not ${GRPC_PORT}`);
  check(ports.metrics === METRICS_PORT, w, `container port metrics is ${ports.metrics}, not ${METRICS_PORT}`);
  check(f.listen === `0.0.0.0:${GRPC_PORT}`, w, `--listen is ${f.listen}, not 0.0.0.0:${GRPC_PORT} (the kubelet probes the pod IP)`);
  check(f.metrics_listen === `0.0.0.0:${METRICS_PORT}`, w, `--metrics_listen is ${f.metrics_listen}, not 0.0.0.0:${METRICS_PORT}`);

  // Probes: native gRPC, numeric port, the right health service names.
  const probes = { startupProbe: "liveness", readinessProbe: "matchmaking.v1.Matchmaker", livenessProbe: "liveness" };
  for (const [p, service] of Object.entries(probes)) {
    const probe = c[p];
    if (!check(probe?.grpc, w, `${p} is missing or not a gRPC probe`)) continue;
    check(probe.grpc.port === GRPC_PORT, w, `${p}.grpc.port is ${JSON.stringify(probe.grpc.port)}, not the number ${GRPC_PORT}`);
    check(probe.grpc.service === service, w, `${p}.grpc.service is ${probe.grpc.service}, not ${service}`);
  }

  // Resources and the flags sized from them.
  const req = c.resources?.requests ?? {};
  const lim = c.resources?.limits ?? {};
  for (const r of ["cpu", "memory"]) {
    check(req[r] !== undefined, w, `resources.requests.${r} is not set`);
    check(lim[r] !== undefined, w, `resources.limits.${r} is not set`);
  }
  const memory = quantity(lim.memory);
  check(memory === quantity(req.memory), w, `memory limit ${lim.memory} differs from the request ${req.memory}`);
  check(quantity(lim.cpu) >= quantity(req.cpu), w, "cpu limit below the request");
  const threads = Number(f.threads);
  check(Number.isInteger(threads) && threads >= 1 && threads === Math.ceil(quantity(lim.cpu)), w,
    `--threads=${f.threads} should equal the CPU limit (${lim.cpu}) in whole CPUs`);
  const quota = Number(f.memory_quota);
  check(quota > 0 && quota < memory, w, `--memory_quota=${f.memory_quota} must be set and below the memory limit ${lim.memory}`);
  const tickets = Number(f.max_waiting_tickets);
  check(tickets > 0 && tickets * BYTES_PER_TICKET < 0.75 * memory, w,
    `--max_waiting_tickets=${f.max_waiting_tickets} at ~15 KiB each must stay under 75 % of the memory limit ${lim.memory}`);

  // Keepalive: what clients are told to expect.
  for (const k of ["keepalive_time", "keepalive_timeout", "min_client_ping_interval", "max_connection_idle", "max_connection_age", "max_connection_age_grace"]) {
    check(f[k] !== undefined && seconds(f[k]) > 0, w, `--${k} is not set to a duration`);
  }

  // Drain: the grace period covers the whole drain.
  const drain = ["drain_delay", "drain_spread", "drain_timeout"].reduce((s, k, i) => s + (f[k] !== undefined ? seconds(f[k]) : [5, 5, 10][i]), 0);
  const grace = pod.terminationGracePeriodSeconds ?? 30;
  check(grace > 20 && grace > drain, w, `terminationGracePeriodSeconds ${grace} must exceed 20 and the drain (${drain} s)`);
  check(d.spec?.strategy?.rollingUpdate?.maxUnavailable === 0, w, "rolling update maxUnavailable is not 0");
  check(!c.lifecycle?.preStop, w, "a preStop hook would delay SIGTERM and the drain; matchd drains by itself");

  // Configuration: --config inside a read-only ConfigMap volume of this rendering.
  const mount = (c.volumeMounts ?? []).find((m) => f.config?.startsWith(m.mountPath.replace(/\/?$/, "/")));
  if (check(mount, w, `--config=${f.config} is not inside a volume mount`)) {
    check(mount.readOnly === true, w, `volume ${mount.name} is not mounted readOnly`);
    const vol = (pod.volumes ?? []).find((v) => v.name === mount.name);
    const cm = vol?.configMap && of("ConfigMap").find((x) => x.metadata.name === vol.configMap.name);
    const key = path.posix.relative(mount.mountPath, f.config);
    if (check(cm, w, `volume ${mount.name} is not a ConfigMap of this rendering`)) {
      let config = null;
      try {
        config = JSON.parse(cm.data?.[key] ?? "");
      } catch (e) {
        check(false, where(cm), `${key} is not JSON: ${e.message}`);
      }
      if (config && check(Array.isArray(config.queues) && config.queues.length > 0, where(cm), `${key} has no queues`)) {
        // A ticket lives on one pod: a held stream cut by connection aging
        // costs the caller its wait unless it re-attaches to the same pod.
        const longest = Math.max(...config.queues.map((q) => (q.maxWait ? seconds(q.maxWait) : 120)));
        const grace = seconds(f.max_connection_age_grace ?? "60s");
        check(grace >= longest, w, `--max_connection_age_grace (${grace} s) is shorter than the longest queue maxWait (${longest} s): aged connections would cut held streams`);
      }
    }
  }

  // Services: a headless one for client-side balancing, h2c on the gRPC port.
  const services = of("Service");
  check(services.some((s) => s.spec?.clusterIP === "None"), name, "no headless Service (clusterIP: None)");
  check(services.some((s) => s.spec?.clusterIP !== "None"), name, "no ClusterIP Service");
  for (const s of services) {
    for (const p of s.spec?.ports ?? []) {
      const target = typeof p.targetPort === "string" ? ports[p.targetPort] : (p.targetPort ?? p.port);
      check(Object.values(ports).includes(target), where(s), `port ${p.name} targets ${p.targetPort}, which the container does not expose`);
      if (target === GRPC_PORT) check(p.appProtocol === "kubernetes.io/h2c", where(s), `port ${p.name} lacks appProtocol kubernetes.io/h2c`);
    }
  }

  // Disruption, scaling, network.
  check(of("PodDisruptionBudget").length === 1, name, "expected one PodDisruptionBudget");
  const hpas = of("HorizontalPodAutoscaler");
  for (const h of hpas) {
    check(h.apiVersion === "autoscaling/v2", where(h), "use autoscaling/v2");
    check(h.spec?.scaleTargetRef?.kind === "Deployment" && h.spec?.scaleTargetRef?.name === d.metadata.name, where(h), "scaleTargetRef is not the Deployment");
    check(h.spec.minReplicas >= 1 && h.spec.maxReplicas >= h.spec.minReplicas, where(h), "minReplicas/maxReplicas inconsistent");
    check(h.spec.metrics?.some((m) => m.resource?.name === "cpu"), where(h), "does not scale on CPU");
  }
  const minReplicas = hpas.length ? hpas[0].spec.minReplicas : (d.spec.replicas ?? 1);
  if (name === "prod") {
    check(minReplicas >= 3, name, `prod runs at least ${minReplicas} replicas; it needs 3 or more`);
    check(hpas.length === 1 && hpas[0].spec.maxReplicas >= 10, name, "prod needs an HPA reaching 10 or more replicas");
    check(d.spec.replicas === undefined, w, "with an HPA the Deployment must not set replicas (every apply would reset the scale)");
  }
  if (name === "dev") check(minReplicas === 1 && (d.spec.replicas ?? 1) === 1, name, "dev runs one replica");
  const np = of("NetworkPolicy")[0];
  if (check(np, name, "no NetworkPolicy")) {
    const allows = (port) => (np.spec.ingress ?? []).filter((r) => (r.ports ?? []).some((p) => p.port === port || p.port === Object.keys(ports).find((k) => ports[k] === port)));
    const grpcRules = allows(GRPC_PORT);
    check(grpcRules.length && grpcRules.every((r) => (r.from ?? []).length && r.from.every((x) => x.podSelector?.matchLabels && Object.keys(x.podSelector.matchLabels).length)),
      where(np), "the gRPC port must be open only to labelled pods");
    const metricsRules = allows(METRICS_PORT);
    check(metricsRules.length && metricsRules.every((r) => (r.from ?? []).length && r.from.every((x) => x.namespaceSelector?.matchLabels)),
      where(np), "the metrics port must be open only to the monitoring namespace");
    check((np.spec.ingress ?? []).every((r) => (r.ports ?? []).length), where(np), "an ingress rule opens every port");
  }
}

for (const [name, objects] of Object.entries(renders)) policy(name, objects);

// ---------------------------------------------------------------- config copy

{
  const canon = (file) => JSON.stringify(JSON.parse(fs.readFileSync(path.join(repo, file), "utf8")));
  check(canon("k8s/base/config.json") === canon("config/default.json"), "k8s/base/config.json",
    "differs from config/default.json (the base ships the default; change queues in an overlay's configMapGenerator)");
}

// ---------------------------------------------------------------- Dockerfile

{
  const where = "Dockerfile";
  const text = fs.readFileSync(path.join(repo, "Dockerfile"), "utf8");
  for (const diag of validateDockerfile(text)) {
    check(false, `${where}:${diag.range.start.line + 1}`, diag.message);
  }
  const df = DockerfileParser.parse(text);
  const instructions = df.getInstructions();
  const froms = instructions.map((ins, i) => [ins, i]).filter(([ins]) => ins.getKeyword() === "FROM");
  check(froms.length >= 2, where, "expected a multi-stage build (builder + runtime)");
  const last = froms.length ? froms[froms.length - 1][1] : 0;
  const final = instructions.slice(last);
  const of = (k) => final.filter((ins) => ins.getKeyword() === k);
  const line = (ins) => `${where}:${ins.getRange().start.line + 1}`;
  const execForm = (ins) => {
    try {
      const v = JSON.parse(ins.getArgumentsContent() ?? "");
      return Array.isArray(v) && v.length > 0 && v.every((s) => typeof s === "string") ? v : null;
    } catch {
      return null;
    }
  };

  for (const [ins] of froms) {
    const image = ins.getArgumentsContent() ?? "";
    check(!/:latest\b/.test(image), line(ins), `FROM ${image}: do not build on :latest`);
  }
  for (const ins of instructions.filter((i) => i.getKeyword() === "ARG")) {
    const m = (ins.getArgumentsContent() ?? "").match(/^BASE_IMAGE=(.*)$/);
    if (m) check(/^[^:@\s]+(:[^\s]+|@sha256:[0-9a-f]{64})$/.test(m[1]) && !m[1].endsWith(":latest"), line(ins), `BASE_IMAGE ${m[1]} needs a tag or digest, not latest`);
  }
  const grpcArg = instructions.find((i) => i.getKeyword() === "ARG" && /^GRPC(=|$)/.test(i.getArgumentsContent() ?? ""));
  check(grpcArg && grpcArg.getArgumentsContent() === "GRPC=debian", where, "build argument GRPC must default to debian");

  const users = of("USER");
  if (check(users.length, where, "the runtime stage has no USER (it would run as root)")) {
    const user = users[users.length - 1].getArgumentsContent();
    check(/^[0-9]+(:[0-9]+)?$/.test(user) && !/^0(:|$)/.test(user), line(users[users.length - 1]),
      `USER ${user}: use a numeric non-root uid:gid (runAsNonRoot can only verify numbers)`);
    check(user === `${UID}:${UID}`, line(users[users.length - 1]), `USER ${user}, expected ${UID}:${UID}`);
  }
  const eps = of("ENTRYPOINT");
  if (check(eps.length === 1, where, `the runtime stage needs exactly one ENTRYPOINT, has ${eps.length}`)) {
    const ep = execForm(eps[0]);
    check(ep, line(eps[0]), "ENTRYPOINT must be the exec (JSON) form, so matchd itself receives SIGTERM");
    check(ep?.[0] === "/usr/local/bin/matchd", line(eps[0]), `ENTRYPOINT runs ${ep?.[0]}, not /usr/local/bin/matchd`);
  }
  const cmds = of("CMD");
  if (cmds.length) {
    const cmd = execForm(cmds[cmds.length - 1]);
    if (check(cmd, line(cmds[cmds.length - 1]), "CMD must be the exec (JSON) form")) {
      const cf = flags(cmd);
      checkFlagsKnown(line(cmds[cmds.length - 1]), cmd);
      check(cf.listen === `0.0.0.0:${GRPC_PORT}`, line(cmds[0]), `CMD --listen is ${cf.listen}, not 0.0.0.0:${GRPC_PORT}`);
      check(cf.metrics_listen === `0.0.0.0:${METRICS_PORT}`, line(cmds[0]), `CMD --metrics_listen is ${cf.metrics_listen}`);
    }
  }
  const exposed = of("EXPOSE").flatMap((i) => (i.getArgumentsContent() ?? "").split(/\s+/));
  for (const p of [GRPC_PORT, METRICS_PORT]) check(exposed.some((e) => e.split("/")[0] === String(p)), where, `EXPOSE lacks ${p}`);
  for (const ins of instructions.filter((i) => i.getKeyword() === "RUN")) {
    const run = ins.getArgumentsContent() ?? "";
    if (/apt-get\s+(-\S+\s+)*install/.test(run)) check(/--no-install-recommends/.test(run), line(ins), "apt-get install without --no-install-recommends");
  }
  const finalRuns = of("RUN").map((i) => i.getArgumentsContent() ?? "");
  check(finalRuns.filter((r) => /apt-get\s+update/.test(r)).every((r) => /rm -rf \/var\/lib\/apt\/lists/.test(r)), where,
    "the runtime stage keeps apt lists (rm -rf /var/lib/apt/lists/* in the same RUN)");
  const ignore = fs.existsSync(path.join(repo, ".dockerignore")) ? fs.readFileSync(path.join(repo, ".dockerignore"), "utf8") : "";
  check(/^\/?build\*?\/?$/m.test(ignore), ".dockerignore", "does not exclude the build directories");
  check(/^\/?\.git\/?$/m.test(ignore), ".dockerignore", "does not exclude .git");
}

// ---------------------------------------------------------------- dashboard and alerts

// matchd's metrics (docs/OPERATIONS.md); histograms also as _bucket/_sum/_count.
const METRICS = ["matchd_tickets_created_total", "matchd_tickets_ended_total", "matchd_tickets_waiting",
  "matchd_queue_max_wait_seconds", "matchd_matches_total", "matchd_rpcs_total", "matchd_build_info",
  "matchd_waiting_party_bytes", "matchd_waiting_party_bytes_limit"];
const HISTOGRAMS = ["matchd_ticket_wait_seconds", "matchd_match_rating_spread", "matchd_match_team_gap",
  "matchd_event_loop_lag_seconds"];
const knownSeries = new Set([...METRICS, ...HISTOGRAMS.flatMap((h) => [`${h}_bucket`, `${h}_sum`, `${h}_count`])]);
function checkSeries(where, expr) {
  for (const m of expr.matchAll(/\bmatchd_[a-z0-9_]+/g)) check(knownSeries.has(m[0]), where, `no such metric: ${m[0]}`);
}

{
  const where = "k8s/grafana-dashboard.json";
  let dash = null;
  try {
    dash = JSON.parse(fs.readFileSync(path.join(repo, where), "utf8"));
  } catch (e) {
    check(false, where, `does not parse: ${e.message}`);
  }
  if (dash) {
    check(dash.uid && dash.title && Array.isArray(dash.panels), where, "needs uid, title and panels");
    check((dash.templating?.list ?? []).some((v) => v.type === "datasource" && v.name === "datasource"), where,
      "needs a datasource variable named datasource");
    const panels = dash.panels.flatMap((p) => [p, ...(p.panels ?? [])]).filter((p) => p.type !== "row");
    const ids = dash.panels.flatMap((p) => [p, ...(p.panels ?? [])]).map((p) => p.id);
    check(new Set(ids).size === ids.length, where, "panel ids are not unique");
    const rules = [];
    for (const p of panels) {
      const pw = `${where} panel "${p.title}"`;
      check(p.datasource?.uid === "${datasource}", pw, "does not use the ${datasource} variable");
      check(p.gridPos && (p.targets ?? []).length > 0, pw, "needs gridPos and targets");
      for (const t of p.targets ?? []) {
        if (!check(typeof t.expr === "string" && t.expr, pw, `target ${t.refId} has no expr`)) continue;
        checkSeries(pw, t.expr);
        // Grafana's variables replaced by plain values, so promtool can parse the query.
        const expr = t.expr.replaceAll("$__rate_interval", "5m").replace(/\$\{?[a-z_]+\}?/g, ".*");
        rules.push({ record: `dashboard:panel_${p.id}:${t.refId.toLowerCase()}`, expr });
      }
    }
    const exprs = panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr ?? ""));
    const wanted = {
      "tickets created by queue": /rate\(matchd_tickets_created_total.*by \(queue\)|by \(queue\) \(rate\(matchd_tickets_created_total/,
      "tickets matched by queue": /by \(queue\) \(rate\(matchd_tickets_ended_total\{[^}]*outcome="matched"/,
      "waiting tickets": /matchd_tickets_waiting/,
      "wait p50": /histogram_quantile\(0\.5, .*matchd_ticket_wait_seconds_bucket/,
      "wait p99": /histogram_quantile\(0\.99, .*matchd_ticket_wait_seconds_bucket/,
      "rating spread p90": /histogram_quantile\(0\.9, .*matchd_match_rating_spread_bucket/,
      "RPC errors by code": /by \(code\) \(rate\(matchd_rpcs_total\{[^}]*code!="OK"/,
      "event-loop lag p99": /histogram_quantile\(0\.99, .*matchd_event_loop_lag_seconds_bucket/,
    };
    for (const [what, re] of Object.entries(wanted)) check(exprs.some((e) => re.test(e)), where, `no panel shows ${what}`);
    // tests/k8s/validate.sh runs `promtool check rules` on this file.
    fs.mkdirSync(path.join(here, ".cache"), { recursive: true });
    fs.writeFileSync(path.join(here, ".cache", "dashboard-rules.json"), JSON.stringify({ groups: [{ name: "dashboard", rules }] }, null, 1));
  }
}
{
  const where = "k8s/prometheus-alerts.yaml";
  const doc = parseAllDocuments(fs.readFileSync(path.join(repo, where), "utf8"))[0]?.toJS();
  const rules = (doc?.groups ?? []).flatMap((g) => g.rules ?? []);
  check(rules.length > 0, where, "no rules");
  for (const r of rules) checkSeries(`${where} ${r.alert ?? r.record}`, String(r.expr ?? ""));
}

// ---------------------------------------------------------------- report

if (problems.length) {
  console.error(`FAILED: ${problems.length} problem(s) in ${checks} checks`);
  for (const p of problems) console.error(`  - ${p}`);
  process.exit(1);
}
const counts = Object.entries(renders).map(([n, o]) => `${n} ${o.length}`).join(", ");
console.log(`ok: ${checks} checks passed (objects: ${counts}; Dockerfile; dashboard; alerts)`);
