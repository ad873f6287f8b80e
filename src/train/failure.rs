//! libtorch failures as errors. tch turns an exception libtorch throws (most often "out of memory"
//! on the card or the host) into a Rust panic in every tensor operation that has no `f_` twin,
//! which ended a training run with Rust's panic message, exit status 101 and no checkpoint of the
//! steps since the last one. [`catch`] runs a part of the run with such panics caught: nothing is
//! printed (where the panic was raised is logged at debug level), and the caller gets a
//! [`LibtorchFailure`] to report, after saving what can still be saved. Nothing here needs libtorch (a failure is a
//! caught panic), so the error types that carry one build without the feature `train`. The same
//! [`catch`] guards the other library that panics on bad input, `tokenizers` (`embed::hf_tokenizer`).

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, Location};
use std::sync::Once;

/// A panic caught by [`catch`]: libtorch's message (its first line; the C++ frames that follow it
/// are left out) or, for a panic of tagfix's own, the message with where it was raised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibtorchFailure {
    pub message: String,
    /// The allocator ran out of memory (on the card or the host).
    pub out_of_memory: bool,
}

impl LibtorchFailure {
    /// The failure a panic with this payload and location stands for.
    pub fn from_panic(payload: &str, location: Option<&str>) -> Self {
        let message = match torch_message(payload) {
            Some(message) => message,
            None => match location {
                Some(at) => format!("{payload} (at {at})"),
                None => payload.to_string(),
            },
        };
        // The error's sentence goes on after it.
        let message = message.trim_end_matches('.').to_string();
        let lower = message.to_ascii_lowercase();
        let out_of_memory = [
            "out of memory",
            "can't allocate memory",
            "cannot allocate memory",
        ]
        .iter()
        .any(|m| lower.contains(m));
        LibtorchFailure {
            message,
            out_of_memory,
        }
    }
}

impl std::fmt::Display for LibtorchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// libtorch's message inside tch's panic text (`called `Result::unwrap()` on an `Err` value:
/// Torch("MESSAGE\nframe #0: …")`), up to its first line break; `None` for another panic.
fn torch_message(payload: &str) -> Option<String> {
    let start = payload.find("Torch(\"")? + "Torch(\"".len();
    let rest = &payload[start..];
    // The payload is the error's debug form: its line breaks are written `\n`.
    let end = [rest.find("\\n"), rest.rfind("\")")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(rest.len());
    let line = rest[..end].replace("\\\"", "\"");
    // `[enforce fail at alloc_cpu.cpp:127] err == 0. ` says where in libtorch, not what.
    let line = match (line.starts_with("[enforce fail at "), line.find("] ")) {
        (true, Some(close)) => {
            let after = &line[close + 2..];
            after
                .split_once(". ")
                .map_or(after, |(_, what)| what)
                .to_string()
        }
        _ => line,
    };
    Some(line.trim().to_string())
}

thread_local! {
    /// Whether this thread is inside [`catch`] (its panics are reported as errors, not printed).
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// Where the last panic caught on this thread was raised.
    static LAST_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs, once, a panic hook that stays quiet for panics [`catch`] will report and hands every
/// other panic to the hook that was there before.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) {
                let at = info.location().map(Location::to_string);
                tracing::debug!(
                    "libtorch failure (caught) at {}",
                    at.as_deref().unwrap_or("?")
                );
                LAST_LOCATION.with(|l| *l.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, returning what a panic in it said instead of unwinding further. Panics on other
/// threads are not caught.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, LibtorchFailure> {
    install_hook();
    let outer = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(outer));
    result.map_err(|panic| {
        let payload = super::error::panic_text(panic.as_ref());
        let location = LAST_LOCATION.with(|l| l.borrow_mut().take());
        LibtorchFailure::from_panic(&payload, location.as_deref())
    })
}

/// [`catch`] for a fallible `f`: a libtorch failure becomes the error `error` makes of it.
pub fn catch_or<T>(
    f: impl FnOnce() -> crate::Result<T>,
    error: impl FnOnce(LibtorchFailure) -> crate::Error,
) -> crate::Result<T> {
    catch(f).unwrap_or_else(|failure| Err(error(failure)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_messages_keep_their_first_line() {
        let cpu = "called `Result::unwrap()` on an `Err` value: Torch(\"[enforce fail at \
                   alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you \
                   tried to allocate 16777216 bytes. Error code 12 (Cannot allocate memory)\\nframe \
                   #0: c10::ThrowEnforceNotMet(char const*, int) + 0x6a\\nframe #1: …\")";
        let f = LibtorchFailure::from_panic(cpu, Some("tensor_generated.rs:11831:37"));
        assert_eq!(
            f.message,
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 16777216 bytes. \
             Error code 12 (Cannot allocate memory)"
        );
        assert!(f.out_of_memory);
        let cuda = "called `Result::unwrap()` on an `Err` value: Torch(\"CUDA out of memory. Tried \
                    to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.06 GiB \
                    is free.\\nException raised from malloc at …\")";
        let f = LibtorchFailure::from_panic(cuda, None);
        assert!(f
            .message
            .starts_with("CUDA out of memory. Tried to allocate 2.00 GiB."));
        assert!(f.message.ends_with("1.06 GiB is free"), "{}", f.message);
        assert!(f.out_of_memory);
        let shape =
            "called `Result::unwrap()` on an `Err` value: Torch(\"shape '[2, 3]' is invalid \
                     for input of size 5\")";
        let f = LibtorchFailure::from_panic(shape, None);
        assert_eq!(f.message, "shape '[2, 3]' is invalid for input of size 5");
        assert!(!f.out_of_memory);
    }

    #[test]
    fn other_panics_say_where_they_were_raised() {
        let f = LibtorchFailure::from_panic("index out of bounds", Some("src/x.rs:3:5"));
        assert_eq!(f.message, "index out of bounds (at src/x.rs:3:5)");
        assert!(!f.out_of_memory);
    }

    #[test]
    fn a_caught_panic_is_returned_and_the_thread_goes_on() {
        let failure = catch(|| -> u32 { panic!("boom {}", 7) }).unwrap_err();
        assert!(
            failure
                .message
                .starts_with("boom 7 (at src/train/failure.rs:"),
            "{failure}"
        );
        assert_eq!(catch(|| 5).unwrap(), 5);
        assert!(!CATCHING.with(Cell::get), "reset after the catch");
    }

    #[cfg(feature = "train")]
    #[test]
    fn a_libtorch_error_from_an_operation_without_an_f_twin_is_caught() {
        let _torch = crate::train::torch_test_lock();
        let failure =
            catch(|| tch::Tensor::zeros([5], tch::kind::FLOAT_CPU).view([2, 3])).unwrap_err();
        assert!(
            failure
                .message
                .starts_with("shape '[2, 3]' is invalid for input of size 5"),
            "{failure}"
        );
    }
}
