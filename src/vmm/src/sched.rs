//! Real-time scheduling for the threads on the watchdog's path, on request
//! (`vmpulse run --realtime-priority N`, [`crate::runner::RunConfig::realtime_priority`]).
//!
//! Carrying out a watchdog action takes two wake-ups before it takes effect: the event
//! loop on its timerfd, then the vCPU thread kicked out of `KVM_RUN` (and a third, the loop
//! again on the vCPU's confirmation). While other work keeps every core busy, Linux's fair
//! scheduler (EEVDF) lets the running task finish its slice before a woken normal task
//! runs, about 0.7 ms × (1 + log2 CPUs) per wake-up, so a few expiries in a hundred are
//! carried out 2-7 ms late however quick the VMM's own code is; a bare timerfd on an idle
//! epoll loop fares no better (docs/PERFORMANCE.md §7). Neither a shorter slice
//! (`sched_setattr` with `sched_runtime`) nor a lower nice value changed that on the
//! measured machine; `SCHED_FIFO` did.
//!
//! So the run loop can switch its thread to `SCHED_FIFO` at a given priority for the
//! run. Threads inherit their creator's policy, so the vCPU thread started from the
//! loop runs at the same priority. The cost, and why it is not the default: a guest
//! that spins instead of halting then holds its core at real-time priority, limited by
//! the kernel's real-time bandwidth (`/proc/sys/kernel/sched_rt_runtime_us`, 95 % by
//! default); it needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` of at least the priority.
//!
//! Timer slack (`PR_SET_TIMERSLACK`) plays no part: a timerfd's hrtimer is armed without
//! slack, and the loop's `epoll_wait` has no timeout.

use std::io;

/// The highest `SCHED_FIFO` priority Linux accepts.
pub const MAX_PRIORITY: u8 = 99;

/// A thread's policy and priority, to put back with [`restore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Previous {
    policy: libc::c_int,
    priority: libc::c_int,
}

fn current() -> io::Result<Previous> {
    // SAFETY: sched_getscheduler takes a pid (0: the calling thread) and touches no
    // memory of ours.
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_getparam writes one `sched_param` into `param`, which lives across
    // the call.
    if unsafe { libc::sched_getparam(0, &mut param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Previous {
        policy,
        priority: param.sched_priority,
    })
}

fn set(policy: libc::c_int, priority: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: sched_setscheduler only reads `param`, which lives across the call; pid 0
    // is the calling thread.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Run the calling thread under `SCHED_FIFO` at `priority` (1 to [`MAX_PRIORITY`]);
/// returns its previous policy for [`restore`]. Threads it creates from now on inherit it.
pub fn realtime(priority: u8) -> io::Result<Previous> {
    if !(1..=MAX_PRIORITY).contains(&priority) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("priority {priority} is not in 1..={MAX_PRIORITY}"),
        ));
    }
    let previous = current()?;
    set(libc::SCHED_FIFO, libc::c_int::from(priority))?;
    Ok(previous)
}

/// Run the calling thread under the normal policy (for helper threads that a real-time
/// thread creates but that have no deadline to keep).
pub fn normal() -> io::Result<()> {
    if current()?.policy == libc::SCHED_OTHER {
        return Ok(());
    }
    set(libc::SCHED_OTHER, 0)
}

/// Put back what [`realtime`] replaced on this thread.
pub fn restore(previous: Previous) -> io::Result<()> {
    set(previous.policy, previous.priority)
}

/// The calling thread's policy is `SCHED_FIFO`, and its priority.
pub fn realtime_priority() -> Option<u8> {
    current()
        .ok()
        .filter(|p| p.policy == libc::SCHED_FIFO)
        .and_then(|p| u8::try_from(p.priority).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_runs_real_time_and_gets_its_policy_back() {
        std::thread::spawn(|| {
            assert!(realtime(0).is_err());
            assert!(realtime(100).is_err());
            let before = current().unwrap();
            match realtime(1) {
                Ok(previous) => {
                    assert_eq!(previous, before);
                    assert_eq!(realtime_priority(), Some(1));
                    // Inherited by the threads it starts; `normal` takes it off one.
                    std::thread::spawn(|| {
                        assert_eq!(realtime_priority(), Some(1));
                        normal().unwrap();
                        assert_eq!(realtime_priority(), None);
                    })
                    .join()
                    .unwrap();
                    restore(previous).unwrap();
                    assert_eq!(current().unwrap(), before);
                }
                // Without CAP_SYS_NICE or RLIMIT_RTPRIO: refused, and nothing changed.
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                    assert_eq!(current().unwrap(), before);
                }
            }
        })
        .join()
        .unwrap();
    }
}
