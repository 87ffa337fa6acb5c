//! What the bench programs share: reading this process's memory, the
//! filters criterion was given, and where criterion writes, so that a
//! measurement criterion cannot make (peak memory of a child process) lands
//! beside criterion's results for `benches/report.py` to read.

// Each bench program uses some of these, not all.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// A field of `/proc/self/status`, in bytes.
pub fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Measures the peak memory that `burst` adds, per task: the resident set
/// before it, then the peak (VmHWM) after, in this process. Prints the one
/// JSON line [`memory_runs`] reads from a child.
pub fn memory_child(tasks: u64, burst: impl FnOnce()) {
    let before = status_bytes("VmRSS");
    // From here the peak counts only the burst (writing 5 resets VmHWM to
    // the current RSS; on a kernel without it the warm-up peak, which is
    // small, stays in).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    burst();
    let peak = status_bytes("VmHWM");
    let per_task = peak.saturating_sub(before) as f64 / tasks as f64;
    println!("{{\"before\": {before}, \"peak\": {peak}, \"tasks\": {tasks}, \"bytes_per_task\": {per_task}}}");
}

/// Runs this executable `runs` times with `env=name` (each a child that
/// calls [`memory_child`]), and writes the median to
/// `<criterion>/<group>/<name>/memory.json`.
pub fn memory_runs(env: &str, group: &str, name: &str, runs: usize) {
    let exe = std::env::current_exe().expect("this bench's executable");
    let dir = criterion_dir().expect("criterion's directory");
    let mut runs: Vec<(f64, String)> = (0..runs.max(1))
        .map(|_| {
            let out = Command::new(&exe)
                .env(env, name)
                .output()
                .expect("a memory child");
            assert!(out.status.success(), "the memory child of {name} failed");
            let line = String::from_utf8(out.stdout).expect("UTF-8");
            let line = line
                .lines()
                .rfind(|l| l.contains("bytes_per_task"))
                .expect("the memory child's line")
                .trim()
                .to_string();
            let per_task = line
                .rsplit_once(": ")
                .and_then(|(_, v)| v.trim_end_matches('}').parse::<f64>().ok())
                .expect("bytes_per_task");
            (per_task, line)
        })
        .collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let all: Vec<String> = runs.iter().map(|r| format!("{:.1}", r.0)).collect();
    let (median, line) = &runs[runs.len() / 2];
    println!("{group}/{name}: {median:.1} B per task (runs: {all:?})");
    let out = dir.join(group).join(name);
    std::fs::create_dir_all(&out).expect("criterion's directory");
    let json = format!(
        "{{\"median\": {line}, \"runs_bytes_per_task\": [{}]}}\n",
        all.join(", ")
    );
    std::fs::write(out.join("memory.json"), json).expect("memory.json");
}

/// The positional arguments of the bench run: criterion's filters.
pub fn filters() -> Vec<String> {
    const WITH_VALUE: [&str; 16] = [
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--measurement-time",
        "--warm-up-time",
        "--sample-size",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--profile-time",
        "--output-format",
        "--color",
        "--plotting-backend",
        "--format",
    ];
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if WITH_VALUE.contains(&a.as_str()) {
            args.next();
        } else if !a.starts_with('-') {
            out.push(a);
        }
    }
    out
}

/// Whether a group that is not criterion's runs now: only when
/// benchmarking (`cargo bench` passes `--bench`), and filtered as criterion
/// filters: when no filter is given, or a filter (a regular expression,
/// read here as `a|b|...` alternatives) names the group.
pub fn runs_now(group: &str) -> bool {
    let filters = filters();
    std::env::args().any(|a| a == "--bench")
        && (filters.is_empty()
            || filters
                .iter()
                .any(|f| f.split('|').any(|alt| group.contains(alt))))
}

/// Where criterion writes: `<target>/criterion`, found from this
/// executable (`<target>/release/deps/<bench>-*`).
pub fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(home.into());
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}
