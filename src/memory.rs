//! Memory of whole process trees.
//!
//! Why trees: the process ukload starts is often not the one holding the
//! guest's memory. The seed system read the `kraft` CLI's RSS (1 MB) while the
//! daemonized QEMU it started held 40 MB. An instance's memory is the sum over
//! every process that belongs to it: the launcher's descendants plus every
//! process carrying the instance's markers (a daemonized VMM re-parented to
//! the harness is no longer the launcher's descendant, but it kept the
//! markers), plus their descendants.
//!
//! PSS is the figure to trust when adding processes up (Kata measures its
//! footprint the same way): shared library pages are divided among their
//! sharers instead of being counted once per process as RSS does.

use std::collections::{HashMap, HashSet};

use crate::proc::{self, MemUsage, ProcStat};

/// Summed memory of a set of processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TreeMemory {
    /// Sum of the RSS of every process, KiB (shared pages counted repeatedly).
    pub rss_kb: u64,
    /// Sum of the PSS of every process, KiB.
    pub pss_kb: u64,
    /// Each process that could be measured, with its own figures.
    pub pids: Vec<(i32, MemUsage)>,
}

/// Sums the memory of `pids`. Processes that vanished, zombies and kernel
/// threads (no address space) and processes we may not read are skipped.
pub fn tree_usage(pids: &[i32]) -> TreeMemory {
    let mut total = TreeMemory::default();
    for &pid in pids {
        if let Ok(usage) = proc::smaps_rollup(pid) {
            total.rss_kb += usage.rss_kb;
            total.pss_kb += usage.pss_kb;
            total.pids.push((pid, usage));
        }
    }
    total
}

/// Every live process belonging to instance `instance` of run `run`:
/// descendants of `launcher_pid` (itself included), every process marked
/// `UKLOAD_RUN=run` and `UKLOAD_INSTANCE=instance`, and the descendants of
/// those. Deduplicated, in discovery order, zombies excluded.
///
/// `table` is a snapshot from [`proc::table`]; the markers are read from
/// `/proc/PID/environ` of the processes in it. For many instances use
/// [`InstanceIndex`]: this reads every environment once per call.
pub fn instance_pids(launcher_pid: i32, run: &str, instance: u32, table: &[ProcStat]) -> Vec<i32> {
    InstanceIndex::new(run, table).pids(launcher_pid, instance)
}

/// One snapshot of a run's processes for the marker path: the process
/// table's parent→children index and the run's marked processes, each
/// environment read once, so that every instance's processes come from the
/// same snapshot at the cost of one scan (not one scan per instance: at 400
/// instances that was seconds).
pub struct InstanceIndex {
    children: HashMap<i32, Vec<i32>>,
    present: HashSet<i32>,
    zombies: HashSet<i32>,
    marked: HashMap<u32, Vec<i32>>,
}

impl InstanceIndex {
    /// Reads the markers of every process in `table` once.
    pub fn new(run: &str, table: &[ProcStat]) -> InstanceIndex {
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for st in table {
            if st.pid != st.ppid {
                children.entry(st.ppid).or_default().push(st.pid);
            }
        }
        let mut marked: HashMap<u32, Vec<i32>> = HashMap::new();
        for m in proc::scan_marked_in(table, Some(run)) {
            if let Some(i) = m.instance {
                marked.entry(i).or_default().push(m.pid);
            }
        }
        InstanceIndex {
            children,
            present: table.iter().map(|s| s.pid).collect(),
            zombies: table
                .iter()
                .filter(|s| s.is_zombie())
                .map(|s| s.pid)
                .collect(),
            marked,
        }
    }

    /// Instance `instance`'s live processes (see [`instance_pids`]).
    pub fn pids(&self, launcher_pid: i32, instance: u32) -> Vec<i32> {
        let mut roots = vec![launcher_pid];
        roots.extend(self.marked.get(&instance).into_iter().flatten().copied());
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for root in roots {
            if !seen.insert(root) {
                continue;
            }
            let mut queue = std::collections::VecDeque::new();
            if self.present.contains(&root) {
                queue.push_back(root);
            }
            while let Some(p) = queue.pop_front() {
                if !self.zombies.contains(&p) {
                    out.push(p);
                }
                for &c in self.children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
                    // A snapshot taken while PIDs are recycled can contain a cycle.
                    if seen.insert(c) {
                        queue.push_back(c);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vanished_pids_are_skipped() {
        let me = std::process::id() as i32;
        // PID 0 never names a process in /proc.
        let t = tree_usage(&[me, 0]);
        assert_eq!(t.pids.len(), 1);
        assert_eq!(t.pids[0].0, me);
        assert!(t.rss_kb > 0 && t.pss_kb > 0 && t.pss_kb <= t.rss_kb);
    }

    #[test]
    fn instance_pids_include_launcher_tree_without_duplicates() {
        let me = std::process::id() as i32;
        let table = proc::table();
        let pids = instance_pids(me, "no-such-run-for-this-test", 0, &table);
        assert_eq!(pids.first(), Some(&me));
        let unique: HashSet<_> = pids.iter().collect();
        assert_eq!(unique.len(), pids.len());
    }
}
