//! The datagen binary, end to end without Kafka: flags, exit codes, files and stdout.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{datagen, pipeline, stderr, stdout};
use streamkit::EventLog;
use streamkit::schema::Coordinate;

const SEEDED: [&str; 6] = [
    "--seed",
    "42",
    "--start-time",
    "2024-04-14T21:51:33Z",
    "--missing-geo-ratio",
    "0.3",
];

#[test]
fn invalid_arguments_are_usage_errors_with_exit_code_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--num-events", "-5"], "--num-events"),
        (&["--max-lag-seconds", "-1"], "--max-lag-seconds"),
        (&["--delay-seconds", "-1"], "--delay-seconds"),
        (&["--num-users", "0"], "--num-users"),
        (&["--missing-geo-ratio", "1.5"], "outside 0..1"),
        (&["--missing-geo-ratio", "-0.1"], "--missing-geo-ratio"),
        (&["--rate", "1000..2000"], "needs --ramp"),
        (&["--rate", "100", "--ramp", "3s"], "--ramp goes with"),
        (&["--rate", "1000@1s,x"], "RATE@DURATION"),
        (&["--rate", "1000@0s"], "longer than zero"),
        (&["--rate", "0..100", "--ramp", "1s"], "--rate"),
        (&["--user-skew", "0"], "--user-skew"),
        (&["--user-skew", "11"], "outside (0, 10]"),
        (&["--user-skew", "hot"], "not a number"),
        (&["--source", "kafka"], "--source"),
        (&["--rate", "0"], "--rate"),
        (&["--rate", "10", "--delay-seconds", "1"], "--delay-seconds"),
        (&["--duration", "soon"], "--duration"),
        (&["--start-time", "yesterday"], "RFC 3339"),
        (&["--time-step-ms", "5"], "--start-time"),
        (&["-X", "linger.ms"], "KEY=VALUE"),
        (
            &["--source", "streaming", "--output", "x.jsonl"],
            "--output",
        ),
        (&["--no-such-flag"], "--no-such-flag"),
        // Ranges: each of these once panicked, hung or was changed silently.
        (&["--duration", "99999999999999999999999"], "--duration"),
        (&["--duration", "18446744073709551615"], "longer than"),
        (&["--delay-seconds", "1e300"], "up to one day"),
        (&["--rate", "1e-300"], "0.1 to 1e9"),
        (&["--rate", "1e-12"], "0.1 to 1e9"),
        (
            &["--rate", "1e300", "--num-events", "3", "-o", "-"],
            "0.1 to 1e9",
        ),
        (
            &["--max-lag-seconds", "18446744073709551615"],
            "--max-lag-seconds",
        ),
        (&["--num-users", "4000000000"], "--num-users"),
        (
            &[
                "--start-time",
                "2024-01-01T00:00:00Z",
                "--time-step-ms",
                "1e300",
            ],
            "up to one day",
        ),
        (&["--start-time", "0000-01-01T00:00:00Z"], "years 1 to 9999"),
        (
            &["-X", "bogus.property=1", "-o", "/dev/null"],
            "uses no Kafka client",
        ),
        (
            &["-s", "streaming", "-X", "bogus.property=1"],
            "bogus.property",
        ),
        (&["-s", "streaming", "-X", "linger.ms=soon"], "linger.ms"),
    ];
    for (args, expected) in cases {
        let output = common::output_within(datagen().args(*args), Duration::from_secs(10));
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?}: stderr lacks {expected:?}:\n{err}"
        );
        assert!(err.starts_with("error:"), "{args:?}: {err}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn the_highest_rate_finishes_a_bounded_run() {
    let output = common::output_within(
        datagen().args(["--rate", "1e9", "--num-events", "3", "-o", "-", "-q"]),
        Duration::from_secs(10),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().count(), 3);
}

#[test]
fn stdout_carries_exactly_the_events_and_nothing_else() {
    let output = datagen()
        .args(["--num-events", "250", "--output", "-"])
        .args(SEEDED)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let events: Vec<EventLog> = text
        .lines()
        .map(|l| EventLog::from_json(l.as_bytes()).expect(l))
        .collect();
    assert_eq!(events.len(), 250);
    assert!(
        events.iter().any(|e| e.lat == Coordinate::Missing),
        "missing-geo users expected"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e.lat, Coordinate::Degrees(_)))
    );
    assert!(
        stderr(&output).contains("250 events"),
        "summary on stderr: {}",
        stderr(&output)
    );
}

#[test]
fn seed_and_start_time_reproduce_output_byte_for_byte_whatever_the_thread_count() {
    let run = |extra: &[&str]| {
        let output = datagen()
            .args(["-e", "20000", "-o", "-", "-q"])
            .args(SEEDED)
            .args(extra)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        output.stdout
    };
    let one = run(&["--threads", "1"]);
    assert_eq!(one.iter().filter(|&&b| b == b'\n').count(), 20_000);
    for threads in ["1", "2", "3", "8"] {
        // Two runs at each thread count: byte-identical to each other and to one thread.
        let first = run(&["--threads", threads]);
        let second = run(&["--threads", threads]);
        assert!(first == second, "two runs at {threads} threads differ");
        assert!(first == one, "{threads} threads differ from one thread");
    }
    let other_seed = datagen()
        .args([
            "-e",
            "20000",
            "-o",
            "-",
            "-q",
            "--seed",
            "43",
            "--start-time",
            "2024-04-14T21:51:33Z",
        ])
        .output()
        .unwrap();
    assert_ne!(one, other_seed.stdout);
}

#[test]
fn without_a_seed_runs_differ_and_are_timed_from_now() {
    let run = || {
        datagen()
            .args(["-e", "50", "-o", "-", "-q"])
            .output()
            .unwrap()
            .stdout
    };
    let (a, b) = (run(), run());
    assert_ne!(a, b);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for line in String::from_utf8(a).unwrap().lines() {
        let event = EventLog::from_json(line.as_bytes()).unwrap();
        assert!((now_ms - event.event_ts).abs() < 60_000, "{line}");
    }
}

#[test]
fn max_lag_spreads_event_times_within_the_bound() {
    let output = datagen()
        .args(["-e", "2000", "-o", "-", "-q", "--max-lag-seconds", "7"])
        .args(SEEDED)
        .output()
        .unwrap();
    let start = 1_713_131_493_000i64;
    let mut lags = Vec::new();
    for (i, line) in stdout(&output).lines().enumerate() {
        let event = EventLog::from_json(line.as_bytes()).unwrap();
        let lag = event.event_ts - (start + i as i64); // default simulated step: 1 ms
        assert!((0..=7_000).contains(&lag), "{lag}");
        lags.push(lag);
    }
    assert!(lags.iter().any(|&l| l > 6_000) && lags.iter().any(|&l| l < 1_000));
}

#[test]
fn batch_without_output_writes_a_new_file_under_inputs_like_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let output = datagen()
        .current_dir(dir.path())
        .args(["-e", "120", "-q"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let files: Vec<_> = std::fs::read_dir(dir.path().join("inputs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.ends_with(".out") && name.len() == 36 + 4, "{name}");
    assert_eq!(
        std::fs::read_to_string(&files[0]).unwrap().lines().count(),
        120
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn rate_is_never_exceeded() {
    // Lower bounds on time only: 50 events at 100/s cannot finish before 0.49 s.
    let started = Instant::now();
    let output = datagen()
        .args(["-e", "50", "--rate", "100", "-o", "-", "-q"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(stdout(&output).lines().count(), 50);
    assert!(
        started.elapsed() >= Duration::from_millis(490),
        "{:?}",
        started.elapsed()
    );

    let output = datagen()
        .args(["--rate", "100", "--duration", "1s", "-o", "-", "-q"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let count = stdout(&output).lines().count();
    assert!((1..=101).contains(&count), "{count} events in 1 s at 100/s");
}

#[test]
fn rate_shapes_release_the_integral_of_their_rate_and_steps_end_the_run() {
    // Steps: 200/s for 1 s, then 600/s for 1 s, and the run ends: at most 801 events.
    let started = Instant::now();
    let output = datagen()
        .args(["--rate", "200@1s,600@1s", "-o", "-", "-q"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let count = stdout(&output).lines().count();
    assert!(
        (600..=801).contains(&count),
        "{count} events from 200@1s,600@1s"
    );
    assert!(started.elapsed() >= Duration::from_millis(1_900));

    // A ramp from 100/s to 900/s over 2 s: 1,000 events are due at 2 s, not before.
    let started = Instant::now();
    let output = datagen()
        .args([
            "--rate", "100..900", "--ramp", "2s", "-e", "1001", "-o", "-", "-q",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().count(), 1001);
    assert!(
        started.elapsed() >= Duration::from_millis(1_950),
        "{:?}",
        started.elapsed()
    );
}

/// Injected bad records, counted by datagen kind by kind, are exactly what the pipeline
/// dead-letters, kind by kind; duplicates come on top of the count and pass through.
#[test]
fn injected_bad_records_are_dead_lettered_kind_by_kind_and_duplicates_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("dirty.jsonl");
    let dead_letters = dir.path().join("dlq.jsonl");
    let generate = |path: &std::path::Path| {
        datagen()
            .args(["-e", "20000", "--seed", "5", "-q"])
            .args(["--start-time", "2024-04-18T09:00:00Z"])
            .args(["--bad-record-ratio", "0.01", "--duplicate-ratio", "0.02"])
            .arg("-o")
            .arg(path)
            .output()
            .unwrap()
    };
    let output = generate(&input);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = stderr(&output);
    // "...; bad records N: not_utf8 A (dead-lettered as not_utf8), ...; duplicates D"
    let mut injected: BTreeMap<String, u64> = BTreeMap::new();
    let bad_part = summary
        .split("bad records ")
        .nth(1)
        .and_then(|rest| rest.split("; duplicates").next())
        .unwrap_or_else(|| panic!("{summary}"));
    for entry in bad_part.split(": ").nth(1).unwrap().split("), ") {
        let count: u64 = entry
            .split(' ')
            .nth(1)
            .unwrap()
            .replace(',', "")
            .parse()
            .unwrap();
        let kind = entry
            .split("dead-lettered as ")
            .nth(1)
            .unwrap()
            .trim_end_matches(')');
        *injected.entry(kind.to_string()).or_default() += count;
    }
    assert_eq!(
        injected.len(),
        5,
        "every pipeline kind is injected: {summary}"
    );
    let duplicates: u64 = summary
        .split("; duplicates ")
        .nth(1)
        .and_then(|d| d.split(|c: char| !c.is_ascii_digit() && c != ',').next())
        .map(|d| d.replace(',', "").parse().unwrap())
        .unwrap();
    assert!(duplicates > 200, "{summary}");
    let bytes = std::fs::read(&input).unwrap();
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(
        lines,
        20_000 + duplicates,
        "every event once, the duplicates twice"
    );

    let run = pipeline()
        .arg("--input")
        .arg(&input)
        .args(["--output", "/dev/null"])
        .arg("--dead-letter-file")
        .arg(&dead_letters)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let mut dead_lettered: BTreeMap<String, u64> = BTreeMap::new();
    for line in std::fs::read_to_string(&dead_letters).unwrap().lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        *dead_lettered
            .entry(entry["kind"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(dead_lettered, injected);

    // The same seed injects the same records.
    let again = dir.path().join("again.jsonl");
    assert!(generate(&again).status.success());
    assert!(
        std::fs::read(&input).unwrap() == std::fs::read(&again).unwrap(),
        "the same seed and start time give the same bytes"
    );
}

#[test]
fn delay_seconds_pauses_after_each_event() {
    let started = Instant::now();
    let output = datagen()
        .args(["-e", "5", "--delay-seconds", "0.1", "-o", "-", "-q"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(stdout(&output).lines().count(), 5);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn progress_lines_go_to_stderr_like_the_original() {
    let output = datagen()
        .args(["-e", "300", "--delay-seconds", "0.004", "-o", "-"])
        .output()
        .unwrap();
    let err = stderr(&output);
    assert!(err.contains("events created so far..."), "{err}");
    assert_eq!(stdout(&output).lines().count(), 300);
}

#[test]
fn a_closed_pipe_stops_the_run_cleanly() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = datagen()
        .args(["-o", "-", "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 4096];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "datagen kept running after its reader left"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

/// `datagen` with `args`, run to its end (at most a minute).
fn datagen_run(args: &[&str]) -> std::process::Output {
    common::output_within(datagen().args(args), Duration::from_secs(60))
}

#[test]
fn outputs_that_would_overwrite_each_other_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    std::fs::write(path("run.json"), "the data\n").unwrap();
    std::fs::write(path("data.jsonl"), "the data\n").unwrap();
    std::os::unix::fs::symlink(path("data.jsonl"), path("linked.json")).unwrap();
    let cases: &[(&[&str], &str)] = &[
        // The report's JSON, beside it, would be the events file.
        (
            &["-o", &path("run.json"), "--report", &path("run.html")],
            "run.json",
        ),
        // The report would be the events file.
        (
            &["-o", &path("run.json"), "--report", &path("run.json")],
            "report",
        ),
        // Through a link: the report's JSON is the events file by inode.
        (
            &["-o", &path("data.jsonl"), "--report", &path("linked.html")],
            "same file",
        ),
        // Not created yet, spelled differently.
        (
            &[
                "-o",
                &path("new/x.json"),
                "--report",
                &path("new/../new/x.html"),
            ],
            "same file",
        ),
    ];
    for (args, expected) in cases {
        let output = datagen_run(&[&["-s", "batch", "-e", "1000", "-q"], *args].concat());
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
        assert_eq!(
            std::fs::read_to_string(path("run.json")).unwrap(),
            "the data\n"
        );
        assert_eq!(
            std::fs::read_to_string(path("data.jsonl")).unwrap(),
            "the data\n"
        );
        assert!(!dir.path().join("new").exists(), "nothing is created");
    }
    // Distinct files: the run writes all three.
    let output = datagen_run(&[
        "-s",
        "batch",
        "-e",
        "1000",
        "-q",
        "-o",
        &path("events.jsonl"),
        "--report",
        &path("report.html"),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        std::fs::read_to_string(path("events.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1000
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("report.json")).unwrap()).unwrap();
    assert_eq!(json["records"], 1000);
}

#[test]
fn a_report_path_that_cannot_be_written_is_refused_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let events = events.to_str().unwrap();
    let folder = dir.path().to_str().unwrap().to_string();
    let missing = format!("{folder}/nonexistent/r.html");
    for (report, expected) in [
        (missing.as_str(), "folder does not exist"),
        (folder.as_str(), "is a folder"),
    ] {
        let output = datagen_run(&[
            "-s", "batch", "-e", "1000", "-q", "-o", events, "--report", report,
        ]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{report}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{report}: {}",
            stderr(&output)
        );
        assert!(
            !std::path::Path::new(events).exists(),
            "no event was generated"
        );
    }
    assert!(
        !dir.path().with_extension("json").exists(),
        "no dir.json beside the folder"
    );
}

#[test]
fn the_summary_is_printed_even_when_the_report_fails_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("reports");
    std::fs::create_dir(&reports).unwrap();
    let report = reports.join("r.html");
    let mut child = datagen()
        .args([
            "-s", "batch", "-e", "20", "--rate", "10", "-q", "-o", "-", "--report",
        ])
        .arg(&report)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The folder goes away while the run is under way (2 s): the report cannot be written.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_dir(&reports).unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "datagen did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("datagen: 20 events"),
        "the summary is printed: {err}"
    );
    assert!(err.contains("the report was not written"), "{err}");
}
