//! TEMPORARY contract stub (procmem helper replaces this file).
use std::io;
#[derive(Clone, Debug)]
pub struct ProcStat { pub pid: i32, pub ppid: i32, pub pgid: i32, pub sid: i32, pub state: char, pub start_ticks: u64, pub comm: String }
#[derive(Clone, Debug)]
pub struct Marked { pub pid: i32, pub run: String, pub instance: Option<u32>, pub cid: Option<u32>, pub stat: ProcStat }
#[derive(Clone, Copy, Debug, Default)]
pub struct MemUsage { pub rss_kb: u64, pub pss_kb: u64 }
pub fn table() -> Vec<ProcStat> { todo!() }
pub fn stat(_pid: i32) -> io::Result<ProcStat> { todo!() }
pub fn cmdline(_pid: i32) -> io::Result<String> { todo!() }
pub fn scan_marked(_run: Option<&str>) -> Vec<Marked> { todo!() }
pub fn signal_if_marked(_pid: i32, _run: &str, _sig: i32) -> io::Result<bool> { todo!() }
pub fn descendants(_root: i32, _t: &[ProcStat]) -> Vec<i32> { todo!() }
