//! TEMPORARY contract stub (procmem helper replaces this file).
use crate::proc::{MemUsage, ProcStat};
#[derive(Clone, Debug, Default)]
pub struct TreeMemory { pub rss_kb: u64, pub pss_kb: u64, pub pids: Vec<(i32, MemUsage)> }
pub fn tree_usage(_pids: &[i32]) -> TreeMemory { todo!() }
pub fn instance_pids(_launcher_pid: i32, _run: &str, _instance: u32, _table: &[ProcStat]) -> Vec<i32> { todo!() }
