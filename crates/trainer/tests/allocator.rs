//! `set_up_cpu` keeps freed memory mapped (see `keep_freed_memory_mapped`). Its own test
//! binary, so that nothing has set the option before.

use dynact_trainer::MI_OPTION_PURGE_DELAY;

#[test]
fn set_up_cpu_turns_mimallocs_purging_off() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return; // the variable wins over set_up_cpu, by design
    }
    // SAFETY: reads an integer option.
    let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
    // mimalloc 3's default purge delay in milliseconds (10 in mimalloc 2): no neighbouring
    // option defaults to either, so the index names the right option.
    assert!(
        before == 1000 || before == 10,
        "option {MI_OPTION_PURGE_DELAY} is {before}"
    );
    dynact_trainer::set_up_cpu(1);
    let after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
    assert_eq!(after, -1);
}
