#![no_main]

#[global_allocator]
static ALLOC: palaver_fuzz::Counting = palaver_fuzz::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| palaver_fuzz::bosh(data));
