# tracer watch as a Nomad system job: one per node, beside the orchestrator (which E2B also
# runs as a system job with the raw_exec driver). Incidents are JSON lines on stdout and are
# posted to the node's Vector (--log-http, on to Loki); metrics on 127.0.0.1:9464 for the
# node's collector (otel-collector's Prometheus receiver).
#
#   nomad job run deploy/tracer-watch.nomad.hcl
#
# The rest of deploy/ wires it into E2B's observability (`cargo xtask deploy-check` keeps these
# files consistent with each other and with the metrics the watcher registers):
#   vector-tracer.toml           records → Loki: a Vector source on 127.0.0.1:30007 for
#                                --log-http (below), labels service/type/node, sandboxID in the line
#   otel-collector-tracer.yaml   metrics → E2B's backend: scrapes --metrics 127.0.0.1:9464
#                                (keep the two addresses in step) as job "tracer-watch"
#   tracer-alerts.yml            alerting rules (with tracer-alerts.test.yml, promtool's tests);
#                                each points to the Loki query by sandboxID and to
#                                `tracer trace --vm <sandboxID> --probe`
#   tracer-dashboard.json        Grafana dashboard (import; pick the Prometheus datasource)
#
# raw_exec runs the task as root in the host's namespaces: what loading BPF programs and
# entering the sandboxes' namespaces need. The binary is the single file `cargo build
# --release -p tracer` makes; install it at /usr/local/bin/tracer (or use an artifact).
job "tracer-watch" {
  type     = "system"
  priority = 40

  group "tracer" {
    # Restart in place when it exits (it never does on its own); back off if it keeps
    # failing (no BTF, no privileges: the reason is on stderr).
    restart {
      attempts = 10
      interval = "10m"
      delay    = "15s"
      mode     = "delay"
    }

    task "watch" {
      driver = "raw_exec"

      config {
        command = "/usr/local/bin/tracer"
        args = [
          "watch",
          "--metrics", "127.0.0.1:9464",
          "--report-dir", "/var/lib/tracer/reports",
          "--max-zoom", "8",
          # The records also go to the node's Vector, as NDJSON batches (vector-tracer.toml),
          # each with the node's name as Nomad knows it. Without that Vector source the
          # watcher retries, then drops the oldest (tracer_log_records_dropped_total);
          # stdout keeps every record either way.
          "--log-http", "http://127.0.0.1:30007/",
          "--node", "${node.unique.name}",
        ]
      }

      env {
        TRACER_LOG = "warn"
      }

      # SIGTERM first: the watcher prints its last repeat counts and detaches; everything
      # it attached is held by its fds, so even a SIGKILL after the timeout leaves nothing.
      kill_signal  = "SIGTERM"
      kill_timeout = "10s"

      # Measured on the lab with 200 sandboxes: well under 100 MB and a few % of a core.
      resources {
        cpu    = 200
        memory = 256
      }

      logs {
        max_files     = 5
        max_file_size = 20
      }
    }
  }
}
