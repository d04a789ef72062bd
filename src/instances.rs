//! TEMPORARY contract stub (procmem helper replaces this file).
pub struct InstanceView;
pub fn ps() -> Vec<InstanceView> { todo!() }
pub fn print_ps(_r: &[InstanceView], _json: bool, _o: &mut dyn std::io::Write) -> std::io::Result<()> { todo!() }
pub struct CleanupOptions { pub run: Option<String>, pub include_live: bool, pub grace: std::time::Duration }
pub struct CleanupReport { pub survivors: Vec<i32> }
impl CleanupReport { pub fn print(&self, _o: &mut dyn std::io::Write) -> std::io::Result<()> { todo!() } }
pub fn cleanup(_o: CleanupOptions) -> CleanupReport { todo!() }
