//! SAX and SensorSAX (symbolic aggregate approximation), computed as CityPulse computes them.
//!
//! SAX turns a window of readings into a short word ("ace") that stores and rules can group
//! and compare without the raw values. This module follows CityPulse: a window whose population
//! standard deviation is below [`FLAT_STDDEV`] becomes the middle letter repeated; any other
//! window is z-normalised, reduced to `word_length` segment means by piecewise aggregate
//! approximation (PAA), and each mean becomes the letter whose index is the number of
//! standard-normal breakpoints Φ⁻¹(i/a) at or below it.
//!
//! Choices CityPulse leaves open, and why they were made this way:
//!
//! * **Fewer values than letters** (n < `word_length`): the values are *repeated* to fill the
//!   word (upsampling, as standard SAX/PAA does), so the word always has exactly `word_length`
//!   letters. Fixed-length words are what [`sax_code`]/[`sax_decode`] and any store keyed by
//!   word rely on; a shorter word would silently change the meaning of a code. Mirroring the
//!   design's rule for n ≥ w (the first n mod w segments hold one value more), the first
//!   w mod n values fill one segment more: each value fills w/n segments, and the first
//!   w mod n values one more.
//! * **Non-finite values** (NaN, ±∞): [`sax_word`] returns `None`; no letter describes them.
//!   [`SensorSax`] skips them and counts them in [`SensorSax::skipped`], so the caller can
//!   report the drop.
//! * **SensorSAX windows**: see [`SensorSax`] for which window the value that triggers an
//!   emission belongs to.
//!
//! Everything here is pure: no I/O, no clocks. Computing the word of a window allocates the
//! output string and one small vector of breakpoints.
//!
//! ```
//! use aqyl_core::windows::sax::{sax_code, sax_word, SaxParams};
//!
//! let params = SaxParams::default(); // CityPulse: alphabet 5, word length 3
//! let ramp: Vec<f64> = (1..=9).map(f64::from).collect();
//! let word = sax_word(&ramp, &params).expect("a non-empty, finite window has a word");
//! assert_eq!(word, "ace");
//! assert_eq!(sax_code(&word, params.alphabet()), Ok(14)); // 0·25 + 2·5 + 4
//! ```

use serde::{Deserialize, Serialize};

/// Smallest supported alphabet size: two letters split the normal distribution at its median.
pub const MIN_ALPHABET: usize = 2;

/// Largest supported alphabet size: one letter per Latin letter, 'a' to 'z'.
pub const MAX_ALPHABET: usize = 26;

/// A window whose population standard deviation is below this is flat and becomes the middle
/// letter repeated (CityPulse's threshold). It is absolute, in the unit of the values.
pub const FLAT_STDDEV: f64 = 1e-4;

/// Above this magnitude the values are scaled down before z-normalisation so that squares of
/// deviations cannot overflow. SAX is scale-invariant, so the word does not change.
const HUGE_MAGNITUDE: f64 = 1e100;

/// Why SAX parameters, a word or a code were rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SaxError {
    /// The alphabet size is outside 2..=26.
    #[error("alphabet size {alphabet} is not supported; use {MIN_ALPHABET} to {MAX_ALPHABET}")]
    UnsupportedAlphabet {
        /// The rejected alphabet size.
        alphabet: usize,
    },
    /// The word length is zero.
    #[error("word length 0 is not supported; use a word length of at least 1 (CityPulse uses 3)")]
    ZeroWordLength,
    /// Words this long cannot be numbered in 64 bits.
    #[error(
        "word length {word_length} with alphabet size {alphabet} gives numeric codes beyond \
         64 bits; use a word length of at most {max_word_length} for this alphabet"
    )]
    WordTooLong {
        /// The alphabet size.
        alphabet: usize,
        /// The rejected word length.
        word_length: usize,
        /// The longest word length whose codes fit in a `u64`.
        max_word_length: usize,
    },
    /// A word holds a character that is not a letter of the alphabet.
    #[error(
        "word {word:?} has {letter:?}, which is not in the alphabet of size {alphabet} \
         ('a' to {last:?}); encode a word with the alphabet size that produced it"
    )]
    LetterOutsideAlphabet {
        /// The word being encoded.
        word: String,
        /// The offending character.
        letter: char,
        /// The alphabet size.
        alphabet: usize,
        /// The last letter of that alphabet.
        last: char,
    },
    /// A code has more digits than the word length allows.
    #[error(
        "code {code} does not fit a word of {word_length} letters with alphabet size \
         {alphabet}; decode with the word length and alphabet size it was encoded with"
    )]
    CodeTooLarge {
        /// The rejected code.
        code: u64,
        /// The alphabet size.
        alphabet: usize,
        /// The word length.
        word_length: usize,
    },
    /// The SensorSAX windows are inconsistent.
    #[error(
        "SensorSAX window bounds are invalid (min {min_window_ms} ms, max {max_window_ms} ms); \
         use a positive max window and a min window no longer than it"
    )]
    InvalidWindows {
        /// The minimum window in milliseconds.
        min_window_ms: u64,
        /// The maximum window in milliseconds.
        max_window_ms: u64,
    },
    /// The SensorSAX sensitivity is not a usable standard deviation.
    #[error(
        "SensorSAX sensitivity {0} is not a finite, non-negative standard deviation; \
         use a value in the unit of the readings, e.g. 1.0"
    )]
    InvalidSensitivity(f64),
}

/// Validated SAX parameters: alphabet size and word length.
///
/// The word length is bounded so that every word has a [`sax_code`] in a `u64`
/// (alphabet^word_length ≤ 2⁶⁴: 64 letters for alphabet 2, 27 for 5, 13 for 26).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SaxParams {
    alphabet: usize,
    word_length: usize,
}

impl SaxParams {
    /// Parameters with `alphabet` letters (2 to 26) and words of `word_length` letters (at
    /// least 1, and short enough that codes fit in 64 bits).
    pub fn new(alphabet: usize, word_length: usize) -> Result<Self, SaxError> {
        check_alphabet(alphabet)?;
        if word_length == 0 {
            return Err(SaxError::ZeroWordLength);
        }
        let max_word_length = max_word_length(alphabet);
        if word_length > max_word_length {
            return Err(SaxError::WordTooLong {
                alphabet,
                word_length,
                max_word_length,
            });
        }
        Ok(Self {
            alphabet,
            word_length,
        })
    }

    /// Number of letters, from 'a'.
    pub fn alphabet(&self) -> usize {
        self.alphabet
    }

    /// Number of letters in every word.
    pub fn word_length(&self) -> usize {
        self.word_length
    }
}

impl Default for SaxParams {
    /// CityPulse's defaults: alphabet 5, word length 3.
    fn default() -> Self {
        Self {
            alphabet: 5,
            word_length: 3,
        }
    }
}

fn check_alphabet(alphabet: usize) -> Result<(), SaxError> {
    if (MIN_ALPHABET..=MAX_ALPHABET).contains(&alphabet) {
        Ok(())
    } else {
        Err(SaxError::UnsupportedAlphabet { alphabet })
    }
}

/// The largest w with alphabet^w ≤ 2⁶⁴, so that codes 0..alphabet^w fit in a `u64`.
fn max_word_length(alphabet: usize) -> usize {
    let limit = 1u128 << 64;
    let mut power = 1u128;
    let mut w = 0;
    loop {
        power *= alphabet as u128;
        if power > limit {
            return w;
        }
        w += 1;
    }
}

/// The `alphabet − 1` standard-normal breakpoints Φ⁻¹(i/alphabet), i = 1..alphabet−1, in
/// increasing order (alphabet 5: −0.8416, −0.2533, 0.2533, 0.8416).
///
/// The upper half is the exact negation of the lower half, and the middle breakpoint of an even
/// alphabet is exactly 0, so a series and its negation get mirrored words.
/// Accurate to about 1e-15 (see [`inverse_normal_cdf`]).
pub fn breakpoints(alphabet: usize) -> Result<Vec<f64>, SaxError> {
    check_alphabet(alphabet)?;
    Ok(breakpoints_unchecked(alphabet))
}

/// [`breakpoints`] for an alphabet already known to be in range.
fn breakpoints_unchecked(alphabet: usize) -> Vec<f64> {
    let mut bps: Vec<f64> = Vec::with_capacity(alphabet - 1);
    for i in 1..alphabet {
        let b = match (2 * i).cmp(&alphabet) {
            std::cmp::Ordering::Less => inverse_normal_cdf(i as f64 / alphabet as f64),
            std::cmp::Ordering::Equal => 0.0,
            // Φ⁻¹(i/a) = −Φ⁻¹((a−i)/a); index a−i−1 holds breakpoint a−i, already computed.
            std::cmp::Ordering::Greater => -bps[alphabet - i - 1],
        };
        bps.push(b);
    }
    bps
}

/// The standard-normal quantile Φ⁻¹(p) for 0 < p < 1 (−∞ at 0 or below, +∞ at 1 or above,
/// NaN for NaN).
///
/// Acklam's rational approximation (relative error below 1.15e-9) refined by one Halley step
/// against [`erfc`], which brings it to about 1e-15. The upper half is computed as −Φ⁻¹(1−p),
/// which is exact in floating point for p ≥ 0.5 and keeps the tail's relative precision.
fn inverse_normal_cdf(p: f64) -> f64 {
    if p.is_nan() {
        return f64::NAN;
    }
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    if p > 0.5 {
        return -inverse_normal_cdf_lower(1.0 - p);
    }
    inverse_normal_cdf_lower(p)
}

/// Φ⁻¹(p) for 0 < p ≤ 0.5.
fn inverse_normal_cdf_lower(p: f64) -> f64 {
    // Peter J. Acklam, "An algorithm for computing the inverse normal cumulative distribution
    // function" (2003).
    const A: [f64; 6] = [
        -3.969683028665376e+01,
        2.209460984245205e+02,
        -2.759285104469687e+02,
        1.38357751867269e+02, // published as 1.383577518672690e+02
        -3.066479806614716e+01,
        2.506628277459239e+00,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e+01,
        1.615858368580409e+02,
        -1.556989798598866e+02,
        6.680131188771972e+01,
        -1.328068155288572e+01,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e+00,
        -2.549732539343734e+00,
        4.374664141464968e+00,
        2.938163982698783e+00,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-03,
        3.224671290700398e-01,
        2.445134137142996e+00,
        3.754408661907416e+00,
    ];
    const P_LOW: f64 = 0.02425;

    let x = if p < P_LOW {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    };

    // One Halley step on f(x) = Φ(x) − p, with Φ(x) = erfc(−x/√2)/2. For x ≤ 0 the argument
    // of erfc is ≥ 0, where it keeps full relative precision even deep in the tail.
    let e = 0.5 * erfc(-x / std::f64::consts::SQRT_2) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (0.5 * x * x).exp();
    x - u / (1.0 + 0.5 * x * u)
}

/// The complementary error function, relative error about 1e-14 over the real line.
///
/// A Taylor series of erf for |x| < 1.5 and a continued fraction of erfc beyond (as CPython's
/// `math.erfc` did before it used libm).
fn erfc(x: f64) -> f64 {
    const SERIES_CUTOFF: f64 = 1.5;
    const SERIES_TERMS: u32 = 25;
    const CONTFRAC_CUTOFF: f64 = 30.0;
    const CONTFRAC_TERMS: u32 = 50;
    let sqrt_pi = std::f64::consts::PI.sqrt();

    let ax = x.abs();
    if ax < SERIES_CUTOFF {
        // erf(x) = 2x·e^(−x²)/√π · Σ (2x²)^k / (1·3·…·(2k+1)), summed by Horner from the back.
        let x2 = x * x;
        let mut acc = 0.0;
        let mut fk = f64::from(SERIES_TERMS) + 0.5;
        for _ in 0..SERIES_TERMS {
            acc = 2.0 + x2 * acc / fk;
            fk -= 1.0;
        }
        return 1.0 - acc * x * (-x2).exp() / sqrt_pi;
    }
    let tail = if ax >= CONTFRAC_CUTOFF {
        0.0
    } else {
        // Lentz-free evaluation of the continued fraction by its convergents p/q.
        let x2 = ax * ax;
        let (mut a, mut da) = (0.0, 0.5);
        let (mut p, mut p_last) = (1.0, 0.0);
        let (mut q, mut q_last) = (da + x2, 1.0);
        for _ in 0..CONTFRAC_TERMS {
            a += da;
            da += 2.0;
            let b = da + x2;
            (p, p_last) = (b * p - a * p_last, p);
            (q, q_last) = (b * q - a * q_last, q);
        }
        p / q * ax * (-x2).exp() / sqrt_pi
    };
    if x > 0.0 {
        tail
    } else {
        2.0 - tail
    }
}

/// The SAX word of one window of values, in the order given (event-time order).
///
/// `None` when `values` is empty or holds a NaN or infinity. A window whose population
/// standard deviation is below [`FLAT_STDDEV`] is the middle letter (index `alphabet/2`:
/// 'c' for 5) repeated. Otherwise the values are z-normalised and split into `word_length`
/// segments whose sizes differ by at most one, the first n mod w segments holding the extra
/// value; each segment mean becomes the letter whose index counts the breakpoints ≤ the mean
/// (so a mean exactly on a breakpoint takes the higher letter).
///
/// With fewer values than letters, each value fills w/n consecutive segments and the first
/// w mod n values one more, so the word still has `word_length` letters (see the module docs).
pub fn sax_word(values: &[f64], params: &SaxParams) -> Option<String> {
    if values.is_empty() || !values.iter().all(|v| v.is_finite()) {
        return None;
    }
    Some(word_of_finite(values, params))
}

/// [`sax_word`] for a non-empty window of finite values.
fn word_of_finite(values: &[f64], params: &SaxParams) -> String {
    let (alphabet, w) = (params.alphabet, params.word_length);
    let n = values.len();
    let mut word = String::with_capacity(w);

    let max_abs = values.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    let scale = if max_abs > HUGE_MAGNITUDE {
        1.0 / max_abs
    } else {
        1.0
    };
    let count = n as f64;
    let mean = values.iter().map(|v| v * scale).sum::<f64>() / count;
    let var = values
        .iter()
        .map(|v| {
            let d = v * scale - mean;
            d * d
        })
        .sum::<f64>()
        / count;
    let stddev = var.sqrt();

    if stddev < FLAT_STDDEV * scale {
        let middle = letter_at(alphabet / 2);
        word.extend(std::iter::repeat_n(middle, w));
        return word;
    }

    let bps = breakpoints_unchecked(alphabet);
    let z = |v: f64| (v * scale - mean) / stddev;
    if n >= w {
        let (base, extra) = (n / w, n % w);
        let mut rest = values;
        for j in 0..w {
            let len = base + usize::from(j < extra);
            let (segment, tail) = rest.split_at(len);
            rest = tail;
            let segment_mean = segment.iter().map(|&v| z(v)).sum::<f64>() / len as f64;
            word.push(letter_of(segment_mean, &bps));
        }
    } else {
        let (base, extra) = (w / n, w % n);
        for (i, &v) in values.iter().enumerate() {
            let repeats = base + usize::from(i < extra);
            word.extend(std::iter::repeat_n(letter_of(z(v), &bps), repeats));
        }
    }
    word
}

/// The letter whose index is the number of breakpoints ≤ `mean`.
fn letter_of(mean: f64, bps: &[f64]) -> char {
    letter_at(bps.partition_point(|&b| b <= mean))
}

/// The letter at `index` from 'a'; callers keep `index` below [`MAX_ALPHABET`].
fn letter_at(index: usize) -> char {
    char::from(b'a' + index as u8)
}

/// The number of a word, for stores that keep numbers but not strings: the word read as a
/// base-`alphabet` number, 'a' = 0, most significant letter first ("abc" with alphabet 5 is
/// 0·25 + 1·5 + 2 = 7).
///
/// Codes only identify words of one length: "c" and "ac" are both 2. Errors when the alphabet
/// is unsupported, a character is not one of its letters, or the code overflows 64 bits.
pub fn sax_code(word: &str, alphabet: usize) -> Result<u64, SaxError> {
    check_alphabet(alphabet)?;
    let base = alphabet as u64;
    let mut code: u64 = 0;
    for letter in word.chars() {
        let digit = u64::from(letter).wrapping_sub(u64::from('a'));
        if digit >= base {
            return Err(SaxError::LetterOutsideAlphabet {
                word: word.to_string(),
                letter,
                alphabet,
                last: letter_at(alphabet - 1),
            });
        }
        code = code
            .checked_mul(base)
            .and_then(|c| c.checked_add(digit))
            .ok_or_else(|| SaxError::WordTooLong {
                alphabet,
                word_length: word.chars().count(),
                max_word_length: max_word_length(alphabet),
            })?;
    }
    Ok(code)
}

/// The word of `word_length` letters whose [`sax_code`] is `code` (leading 'a's restored).
///
/// Errors when the alphabet is unsupported or `code` needs more than `word_length` letters.
pub fn sax_decode(code: u64, alphabet: usize, word_length: usize) -> Result<String, SaxError> {
    check_alphabet(alphabet)?;
    let base = alphabet as u64;
    let mut letters = vec!['a'; word_length];
    let mut rest = code;
    for slot in letters.iter_mut().rev() {
        *slot = letter_at((rest % base) as usize);
        rest /= base;
    }
    if rest != 0 {
        return Err(SaxError::CodeTooLarge {
            code,
            alphabet,
            word_length,
        });
    }
    Ok(letters.into_iter().collect())
}

/// The word of one SensorSAX window, with its extent in event time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaxEmission {
    /// Event time of the first value in the window, in Unix milliseconds.
    pub start_ms: u64,
    /// Event time of the last value in the window (inclusive), in Unix milliseconds.
    pub end_ms: u64,
    /// Number of values in the window.
    pub count: u64,
    /// The SAX word of the window.
    pub word: String,
    /// [`sax_code`] of the word.
    pub code: u64,
    /// Statistics of the window's values.
    pub stats: crate::windows::window::WindowStats,
}

/// SensorSAX: SAX over adaptive windows of one sensor's values, as a sans-I/O state machine.
///
/// A window starts at its first value. It closes when
///
/// * **the maximum window is reached**: a value arrives at or after `start + max_window_ms`.
///   That value is *not* in the closed window; it starts the next one. Every window thus lies
///   within `[start, start + max_window_ms)`, like a tumbling window, and a value that comes
///   after a long silence is not folded into a stale window.
/// * **the signal turns volatile**: after adding a value at or after `start + min_window_ms`,
///   the window's population standard deviation exceeds `sensitivity`. That value *is* in the
///   closed window: it is the evidence of the change, so the emitted word shows it, and the
///   next window starts calm.
///
/// Volatile windows before the minimum window are not closed, so a burst cannot produce a
/// stream of one-value words. With `min_window_ms == max_window_ms` this is plain SAX over
/// fixed windows.
///
/// The caller must push each sensor's values in event-time order (one `SensorSax` per sensor
/// and field, fed after the watermark has ordered them). A value earlier than the window start
/// is treated as if it arrived at the start. NaN and infinite values are skipped and counted
/// in [`SensorSax::skipped`].
///
/// It serializes as it stands, open window and parameters included (a checkpoint restores
/// it mid-window; a machine keeps the parameters it was made with until it is released).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SensorSax {
    params: SaxParams,
    min_window_ms: u64,
    max_window_ms: u64,
    sensitivity: f64,
    /// Values of the open window, in arrival order; reused across windows.
    buffer: Vec<f64>,
    /// Event time of the first value of the open window, `None` when no window is open.
    start: Option<u64>,
    /// Event time of the latest value of the open window.
    end: u64,
    /// Running mean and sum of squared deviations (Welford), so each push costs O(1).
    mean: f64,
    m2: f64,
    skipped: u64,
}

impl SensorSax {
    /// A SensorSAX state machine. `sensitivity` is a population standard deviation in the unit
    /// of the values. Errors when `max_window_ms` is 0, `min_window_ms > max_window_ms`, or
    /// `sensitivity` is negative or not finite.
    pub fn new(
        params: SaxParams,
        min_window_ms: u64,
        max_window_ms: u64,
        sensitivity: f64,
    ) -> Result<Self, SaxError> {
        if max_window_ms == 0 || min_window_ms > max_window_ms {
            return Err(SaxError::InvalidWindows {
                min_window_ms,
                max_window_ms,
            });
        }
        if !sensitivity.is_finite() || sensitivity < 0.0 {
            return Err(SaxError::InvalidSensitivity(sensitivity));
        }
        Ok(Self {
            params,
            min_window_ms,
            max_window_ms,
            sensitivity,
            buffer: Vec::new(),
            start: None,
            end: 0,
            mean: 0.0,
            m2: 0.0,
            skipped: 0,
        })
    }

    /// Adds the value observed at `time_ms` (event time, Unix milliseconds) and returns the
    /// window it closed, if any (see the type's docs for which window the value joins).
    pub fn push(&mut self, time_ms: u64, value: f64) -> Option<SaxEmission> {
        if !value.is_finite() {
            self.skipped += 1;
            return None;
        }
        if let Some(start) = self.start {
            if time_ms.saturating_sub(start) >= self.max_window_ms {
                let closed = self.close();
                self.add(time_ms, value);
                // A one-value window has stddev 0, which never exceeds the sensitivity.
                return closed;
            }
        }
        self.add(time_ms, value);
        let start = self.start?;
        if time_ms.saturating_sub(start) >= self.min_window_ms && self.stddev() > self.sensitivity {
            return self.close();
        }
        None
    }

    /// Closes the open window, if any, for shutdown or end of input.
    pub fn flush(&mut self) -> Option<SaxEmission> {
        self.close()
    }

    /// Number of NaN or infinite values skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn add(&mut self, time_ms: u64, value: f64) {
        let start = *self.start.get_or_insert(time_ms);
        self.end = time_ms.max(start);
        self.buffer.push(value);
        let delta = value - self.mean;
        self.mean += delta / self.buffer.len() as f64;
        self.m2 += delta * (value - self.mean);
    }

    fn stddev(&self) -> f64 {
        if self.buffer.is_empty() {
            return 0.0;
        }
        (self.m2 / self.buffer.len() as f64).sqrt()
    }

    fn close(&mut self) -> Option<SaxEmission> {
        let start_ms = self.start.take()?;
        // The buffer is non-empty and finite: `start` is set only by `add`, which only takes
        // finite values.
        let word = word_of_finite(&self.buffer, &self.params);
        // SaxParams bounds the word length so every word's code fits in a u64.
        let code = word.bytes().fold(0u64, |code, letter| {
            code.wrapping_mul(self.params.alphabet as u64) + u64::from(letter - b'a')
        });
        let mut sorted = self.buffer.clone();
        let stats = crate::windows::window::WindowStats::compute(&mut sorted)?;
        let emission = SaxEmission {
            start_ms,
            end_ms: self.end,
            count: self.buffer.len() as u64,
            word,
            code,
            stats,
        };
        self.buffer.clear();
        self.mean = 0.0;
        self.m2 = 0.0;
        Some(emission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(alphabet: usize, word_length: usize) -> SaxParams {
        SaxParams::new(alphabet, word_length).unwrap()
    }

    fn word(values: &[f64], alphabet: usize, word_length: usize) -> String {
        sax_word(values, &params(alphabet, word_length)).unwrap()
    }

    fn ramp(n: u32) -> Vec<f64> {
        (1..=n).map(f64::from).collect()
    }

    // ---- inverse normal CDF and breakpoints ----

    #[test]
    fn erfc_matches_published_values() {
        // Abramowitz & Stegun table 7.1 / any reference erfc, to 16 digits.
        let cases = [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_13),
            (2.0, 0.004_677_734_981_047_266),
            (3.0, 2.209_049_699_858_544e-5),
            (5.0, 1.537_459_794_428_035e-12),
            (-1.0, 1.842_700_792_949_715),
        ];
        for (x, expected) in cases {
            let got = erfc(x);
            assert!(
                ((got - expected) / expected).abs() < 1e-13,
                "erfc({x}) = {got}, expected {expected}"
            );
        }
    }

    #[test]
    fn inverse_normal_cdf_matches_published_quantiles_to_1e_12() {
        // Standard quantiles to 15+ digits. Acklam's approximation alone is only good to
        // ~1e-9 relative, so this tolerance checks that the Halley step is doing its job.
        let cases = [
            (0.5, 0.0),
            (0.6, 0.253_347_103_135_799_7),
            (0.75, 0.674_489_750_196_081_7),
            (0.8, 0.841_621_233_572_914_4),
            (0.9, 1.281_551_565_544_600_5),
            (0.95, 1.644_853_626_951_472),
            (0.975, 1.959_963_984_540_054),
            (0.99, 2.326_347_874_040_841),
            (0.999, 3.090_232_306_167_813),
            (0.3, -0.524_400_512_708_040_7),
            (0.01, -2.326_347_874_040_841),
            (1e-6, -4.753_424_308_822_899),
            (1e-10, -6.361_340_902_404_056),
        ];
        for (p, expected) in cases {
            let got = inverse_normal_cdf(p);
            assert!(
                (got - expected).abs() <= 1e-12 * expected.abs().max(1.0),
                "Φ⁻¹({p}) = {got}, expected {expected}"
            );
        }
        assert_eq!(inverse_normal_cdf(0.0), f64::NEG_INFINITY);
        assert_eq!(inverse_normal_cdf(1.0), f64::INFINITY);
        assert!(inverse_normal_cdf(f64::NAN).is_nan());
    }

    #[test]
    fn breakpoints_match_published_tables_for_alphabets_3_to_10() {
        // The SAX breakpoint table of Lin, Keogh, Lonardi and Chiu (2003), given there to 2
        // decimals, here to 4 (checked against Φ⁻¹ from Python's statistics.NormalDist).
        let tables: [(usize, &[f64]); 8] = [
            (3, &[-0.4307, 0.4307]),
            (4, &[-0.6745, 0.0, 0.6745]),
            (5, &[-0.8416, -0.2533, 0.2533, 0.8416]),
            (6, &[-0.9674, -0.4307, 0.0, 0.4307, 0.9674]),
            // Φ⁻¹(2/7) = −0.565949 rounds to −0.5659; tables quoting −0.5660 round twice
            // (via −0.56595).
            (7, &[-1.0676, -0.5659, -0.1800, 0.1800, 0.5659, 1.0676]),
            (8, &[-1.1503, -0.6745, -0.3186, 0.0, 0.3186, 0.6745, 1.1503]),
            (
                9,
                &[
                    -1.2206, -0.7647, -0.4307, -0.1397, 0.1397, 0.4307, 0.7647, 1.2206,
                ],
            ),
            (
                10,
                &[
                    -1.2816, -0.8416, -0.5244, -0.2533, 0.0, 0.2533, 0.5244, 0.8416, 1.2816,
                ],
            ),
        ];
        for (alphabet, published) in tables {
            let got = breakpoints(alphabet).unwrap();
            assert_eq!(got.len(), alphabet - 1, "alphabet {alphabet}");
            for (g, p) in got.iter().zip(published) {
                // Rounded to 4 decimals, the table value is within half a unit of the 4th.
                assert!(
                    (g - p).abs() <= 0.5e-4,
                    "alphabet {alphabet}: {g} does not round to {p}"
                );
            }
        }
    }

    #[test]
    fn breakpoints_are_increasing_antisymmetric_with_an_exact_zero_middle() {
        for alphabet in MIN_ALPHABET..=MAX_ALPHABET {
            let bps = breakpoints(alphabet).unwrap();
            assert!(bps.windows(2).all(|w| w[0] < w[1]), "alphabet {alphabet}");
            for (lo, hi) in bps.iter().zip(bps.iter().rev()) {
                assert_eq!(*lo, -*hi, "alphabet {alphabet}");
            }
            if alphabet % 2 == 0 {
                assert_eq!(bps[alphabet / 2 - 1], 0.0, "alphabet {alphabet}");
            }
        }
        assert_eq!(breakpoints(2).unwrap(), vec![0.0]);
        // a = 26: the outermost is Φ⁻¹(1/26) = −1.7688.
        assert!((breakpoints(26).unwrap()[0] + 1.7688).abs() < 1e-4);
    }

    #[test]
    fn breakpoints_reject_unsupported_alphabets() {
        for alphabet in [0, 1, 27, 30] {
            assert_eq!(
                breakpoints(alphabet),
                Err(SaxError::UnsupportedAlphabet { alphabet })
            );
        }
    }

    // ---- parameters ----

    #[test]
    fn params_default_to_citypulse_and_validate() {
        let d = SaxParams::default();
        assert_eq!((d.alphabet(), d.word_length()), (5, 3));
        assert_eq!(SaxParams::new(5, 3), Ok(d));

        let err = SaxParams::new(30, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "alphabet size 30 is not supported; use 2 to 26"
        );
        assert!(SaxParams::new(1, 3).is_err());
        assert_eq!(SaxParams::new(5, 0), Err(SaxError::ZeroWordLength));

        // 26^13 ≈ 2.48e18 fits in a u64 (≈ 1.84e19); 26^14 ≈ 6.45e19 does not.
        assert!(SaxParams::new(26, 13).is_ok());
        let err = SaxParams::new(26, 14).unwrap_err();
        assert!(err.to_string().contains("at most 13"), "{err}");
        // 2^64 codes are 0..=u64::MAX, so 64 binary letters fit and 65 do not.
        assert!(SaxParams::new(2, 64).is_ok());
        assert!(SaxParams::new(2, 65).is_err());
        // 5^27 ≈ 7.45e18 fits; 5^28 ≈ 3.73e19 does not.
        assert!(SaxParams::new(5, 27).is_ok());
        assert!(SaxParams::new(5, 28).is_err());
    }

    // ---- sax_word ----

    #[test]
    fn empty_or_non_finite_windows_have_no_word() {
        let p = SaxParams::default();
        assert_eq!(sax_word(&[], &p), None);
        assert_eq!(sax_word(&[1.0, f64::NAN, 3.0], &p), None);
        assert_eq!(sax_word(&[1.0, f64::INFINITY], &p), None);
    }

    #[test]
    fn flat_window_is_the_middle_letter_repeated() {
        let flat = [20.0; 6];
        // Middle letter index alphabet/2: 5 → 2 'c', 4 → 2 'c', 3 → 1 'b', 2 → 1 'b', 26 → 'n'.
        assert_eq!(word(&flat, 5, 3), "ccc");
        assert_eq!(word(&flat, 4, 3), "ccc");
        assert_eq!(word(&flat, 3, 3), "bbb");
        assert_eq!(word(&flat, 2, 4), "bbbb");
        assert_eq!(word(&flat, 26, 2), "nn");
        // A single value is flat too (stddev 0).
        assert_eq!(word(&[7.5], 5, 3), "ccc");
    }

    #[test]
    fn flatness_uses_the_population_stddev_against_1e_4() {
        // [0, 1.9e-4]: mean 0.95e-4, deviations ±0.95e-4, population stddev 0.95e-4 < 1e-4
        // → flat. (The sample stddev, dividing by n−1, would be 1.34e-4 and not flat.)
        assert_eq!(word(&[0.0, 1.9e-4], 5, 2), "cc");
        // [0, 2.2e-4]: population stddev 1.1e-4 ≥ 1e-4 → z = −1, +1 → 'a' (−1 < −0.8416),
        // 'e' (+1 ≥ 0.8416).
        assert_eq!(word(&[0.0, 2.2e-4], 5, 2), "ae");
    }

    #[test]
    fn ramp_1_to_9_is_ace() {
        // mean 5; squared deviations 2·(16+9+4+1) = 60; population stddev √(60/9) = 2.5820.
        // Segments [1,2,3] [4,5,6] [7,8,9] have z-means −3/2.5820 = −1.1619, 0, +1.1619.
        // −1.1619 < −0.8416 → 0 'a'; 0 ≥ −0.8416, −0.2533 → 2 'c'; 1.1619 ≥ all four → 4 'e'.
        assert_eq!(word(&ramp(9), 5, 3), "ace");
        // Reversed, the word mirrors.
        let mut down = ramp(9);
        down.reverse();
        assert_eq!(word(&down, 5, 3), "eca");
    }

    #[test]
    fn when_n_is_not_a_multiple_of_w_the_first_segments_hold_one_more() {
        // 10 values, w = 3: segments of 4, 3, 3.
        // values [0,0,0,9, 0,0,0, 0,0,0]: mean 0.9; squared deviations 9·0.81 + 8.1² = 72.9;
        // population stddev √7.29 = 2.7.
        // Segment 1 [0,0,0,9]: mean 2.25 → z (2.25−0.9)/2.7 = 0.5 ≥ −0.8416, −0.2533, 0.2533
        //   → 3 'd'.
        // Segments 2, 3 [0,0,0]: z (0−0.9)/2.7 = −0.3333 ≥ −0.8416 only → 1 'b'.
        // Putting the extra value last (3,3,4) or in the middle (3,4,3) would give "bdb".
        let values = [0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(word(&values, 5, 3), "dbb");

        // 1..=10 with w = 3: mean 5.5, population stddev √8.25 = 2.8723.
        // [1,2,3,4] mean 2.5 → −1.0445 'a'; [5,6,7] mean 6 → 0.1741 'c'; [8,9,10] mean 9 →
        // 1.2185 'e'.
        assert_eq!(word(&ramp(10), 5, 3), "ace");
    }

    #[test]
    fn a_window_shorter_than_the_word_is_upsampled_by_repeating_values() {
        // [1, 3] with w = 3: mean 2, stddev 1, z = −1, +1 → 'a', 'e' (a = 5).
        // w/n = 1 and w mod n = 1, so the first value fills 2 segments, the second 1.
        assert_eq!(word(&[1.0, 3.0], 5, 3), "aae");
        // [1,2,3,4] with w = 6: mean 2.5, population stddev √1.25 = 1.1180,
        // z = −1.3416 'a', −0.4472 'b', 0.4472 'd', 1.3416 'e'.
        // w/n = 1 and w mod n = 2: the first two values fill 2 segments each → "aabbde"
        // (not the shorter "abde", and not "aabdde" from spreading the repeats).
        assert_eq!(word(&ramp(4), 5, 6), "aabbde");
        // n == w: one value per segment.
        assert_eq!(word(&ramp(4), 5, 4), "abde");
        // Every word has word_length letters.
        for n in 1..=8 {
            for w in 1..=10 {
                let values: Vec<f64> = (0..n).map(|i| f64::from(i * i)).collect();
                assert_eq!(word(&values, 5, w).len(), w, "n {n}, w {w}");
            }
        }
    }

    #[test]
    fn one_series_under_alphabets_3_to_10() {
        // The ramp 1..=9 has segment z-means −1.1619, 0 (exactly: −1/s + 0 + 1/s), +1.1619.
        // Letter index = number of breakpoints ≤ the mean (tables in the breakpoint test):
        //   a=3  (±0.4307):               −1.16 → 0, 0 → 1, 1.16 → 2  "abc"
        //   a=4  (0 counts as ≤ 0):       0, 2, 3                     "acd"
        //   a=5:                          0, 2, 4                     "ace"
        //   a=6  (0 is the 3rd):          0, 3, 5                     "adf"
        //   a=7  (−1.0676 > −1.1619):     0, 3, 6                     "adg"
        //   a=8  (−1.1503 > −1.1619):     0, 4, 7                     "aeh"
        //   a=9  (−1.2206 ≤ −1.1619; 1.1619 < 1.2206): 1, 4, 7        "beh"
        //   a=10 (−1.2816 ≤ −1.1619; 1.1619 < 1.2816): 1, 5, 8        "bfi"
        let expected = ["abc", "acd", "ace", "adf", "adg", "aeh", "beh", "bfi"];
        for (alphabet, want) in (3..=10).zip(expected) {
            assert_eq!(word(&ramp(9), alphabet, 3), want, "alphabet {alphabet}");
        }
    }

    #[test]
    fn a_mean_exactly_on_a_breakpoint_takes_the_higher_letter() {
        // a = 4, breakpoints −0.6745, 0, 0.6745. Values [−3,−3, 1,−1, 3,3], w = 3:
        // mean 0, population stddev √(38/6) = 2.5166.
        // [−3,−3] → −1.1921 'a'; [1,−1] → (0.3974 − 0.3974)/2 = exactly 0, and 0 ≤ 0 counts
        // → index 2 'c' (a strict < would give 'b'); [3,3] → 1.1921 'd'.
        assert_eq!(word(&[-3.0, -3.0, 1.0, -1.0, 3.0, 3.0], 4, 3), "acd");
        // The rule at a non-zero breakpoint: a mean equal to breakpoint i (1-based) has index i.
        let bps = breakpoints(5).unwrap();
        for (i, &b) in bps.iter().enumerate() {
            assert_eq!(letter_of(b, &bps), letter_at(i + 1));
            assert_eq!(letter_of(b - 1e-12, &bps), letter_at(i));
        }
    }

    #[test]
    fn negating_a_series_mirrors_its_word() {
        // Breakpoints are antisymmetric, so letter k of x is letter a−1−k of −x (except at a
        // mean exactly on a breakpoint, which random data does not hit).
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let alphabet = rng.usize(MIN_ALPHABET..=MAX_ALPHABET);
            let w = rng.usize(1..=8);
            let values: Vec<f64> = (0..rng.usize(2..40)).map(|_| rng.f64() * 100.0).collect();
            let negated: Vec<f64> = values.iter().map(|v| -v).collect();
            let up = word(&values, alphabet, w);
            let mirrored: String = up
                .bytes()
                .map(|c| letter_at(alphabet - 1 - usize::from(c - b'a')))
                .collect();
            assert_eq!(word(&negated, alphabet, w), mirrored, "{values:?}");
        }
    }

    #[test]
    fn huge_values_give_the_same_word_as_scaled_ones() {
        // SAX is scale-invariant; deviations of 1e200 would overflow when squared unless the
        // window is scaled first.
        let big: Vec<f64> = ramp(9).iter().map(|v| v * 1e200).collect();
        assert_eq!(word(&big, 5, 3), "ace");
    }

    // ---- codes ----

    #[test]
    fn sax_code_reads_the_word_in_base_alphabet() {
        // "abc", a = 5: 0·25 + 1·5 + 2 = 7. "ace": 0·25 + 2·5 + 4 = 14. "eee": 4·31 = 124 = 5³−1.
        assert_eq!(sax_code("abc", 5), Ok(7));
        assert_eq!(sax_code("ace", 5), Ok(14));
        assert_eq!(sax_code("eee", 5), Ok(124));
        // Most significant letter first: "ba" = 1·5 + 0 = 5, "ab" = 1.
        assert_eq!(sax_code("ba", 5), Ok(5));
        assert_eq!(sax_code("ab", 5), Ok(1));
        assert_eq!(sax_code("", 5), Ok(0));
        // Largest codes: 64 'b's in binary is u64::MAX; 13 'z's is 26^13 − 1.
        assert_eq!(sax_code(&"b".repeat(64), 2), Ok(u64::MAX));
        assert_eq!(sax_code(&"z".repeat(13), 26), Ok(26u64.pow(13) - 1));
    }

    #[test]
    fn sax_code_rejects_foreign_letters_and_overflow() {
        let err = sax_code("abf", 5).unwrap_err();
        assert_eq!(
            err.to_string(),
            "word \"abf\" has 'f', which is not in the alphabet of size 5 ('a' to 'e'); \
             encode a word with the alphabet size that produced it"
        );
        assert!(sax_code("aBc", 5).is_err());
        assert!(sax_code("a c", 5).is_err());
        assert!(sax_code("é", 26).is_err());
        assert!(matches!(
            sax_code(&"z".repeat(14), 26),
            Err(SaxError::WordTooLong { .. })
        ));
        assert!(sax_code("abc", 27).is_err());
    }

    #[test]
    fn sax_decode_inverts_sax_code() {
        assert_eq!(sax_decode(7, 5, 3).unwrap(), "abc");
        assert_eq!(sax_decode(0, 5, 3).unwrap(), "aaa");
        assert_eq!(sax_decode(u64::MAX, 2, 64).unwrap(), "b".repeat(64));
        // Exhaustive round trip for small words, every alphabet.
        for alphabet in MIN_ALPHABET..=MAX_ALPHABET {
            for w in 1..=3 {
                let count = (alphabet as u64).pow(w as u32);
                for code in 0..count {
                    let word = sax_decode(code, alphabet, w).unwrap();
                    assert_eq!(word.len(), w);
                    assert_eq!(sax_code(&word, alphabet), Ok(code), "{word}");
                }
                // One past the largest code does not fit.
                assert!(matches!(
                    sax_decode(count, alphabet, w),
                    Err(SaxError::CodeTooLarge { .. })
                ));
            }
        }
        // Random round trips at the longest word length of each alphabet.
        let mut rng = fastrand::Rng::with_seed(11);
        for alphabet in MIN_ALPHABET..=MAX_ALPHABET {
            let w = max_word_length(alphabet);
            for _ in 0..50 {
                let word: String = (0..w).map(|_| letter_at(rng.usize(0..alphabet))).collect();
                let code = sax_code(&word, alphabet).unwrap();
                assert_eq!(sax_decode(code, alphabet, w).unwrap(), word);
            }
        }
    }

    // ---- SensorSAX ----

    fn sensor(min_window_ms: u64, max_window_ms: u64, sensitivity: f64) -> SensorSax {
        SensorSax::new(
            SaxParams::default(),
            min_window_ms,
            max_window_ms,
            sensitivity,
        )
        .unwrap()
    }

    #[test]
    fn sensor_sax_emits_at_the_max_window_and_the_late_value_starts_the_next() {
        // min 10 s, max 60 s, sensitivity 5: values 1..=6 every 10 s have population stddev
        // √(35/12) = 1.708 < 5, so only the max window can close them.
        let mut s = sensor(10_000, 60_000, 5.0);
        for (i, v) in (1..=6).enumerate() {
            assert_eq!(s.push(i as u64 * 10_000, f64::from(v)), None, "value {v}");
        }
        // t = 60 000 − 0 ≥ 60 000 closes [1..6]. Segments [1,2] [3,4] [5,6], mean 3.5,
        // stddev 1.708: z-means −1.171 'a', 0 'c', 1.171 'e' → "ace", code 0·25+2·5+4 = 14.
        // Had the 100 joined the window, count would be 7 and the word different.
        let emitted = s.push(60_000, 100.0).unwrap();
        assert_eq!(
            emitted,
            SaxEmission {
                start_ms: 0,
                end_ms: 50_000,
                count: 6,
                word: "ace".to_string(),
                code: 14,
                stats: crate::windows::window::WindowStats::compute(&mut [
                    1.0, 2.0, 3.0, 4.0, 5.0, 6.0
                ])
                .unwrap(),
            }
        );
        assert_eq!(emitted.stats.mean, 3.5);
        // The 100 opened the next window.
        let rest = s.flush().unwrap();
        assert_eq!(
            (rest.start_ms, rest.end_ms, rest.count, rest.word.as_str()),
            (60_000, 60_000, 1, "ccc")
        );
    }

    #[test]
    fn sensor_sax_max_window_is_half_open() {
        // A flat signal: the value at 59 999 stays, the one at 60 000 starts a new window.
        let mut s = sensor(0, 60_000, 1.0);
        assert_eq!(s.push(0, 20.0), None);
        assert_eq!(s.push(59_999, 20.0), None);
        let e = s.push(60_000, 20.0).unwrap();
        // "ccc" = 2·25 + 2·5 + 2 = 62.
        assert_eq!(
            (e.count, e.end_ms, e.word.as_str(), e.code),
            (2, 59_999, "ccc", 62)
        );
        // After a long silence the late value is not folded into the stale window.
        let e = s.push(10_000_000, 20.0).unwrap();
        assert_eq!((e.start_ms, e.count), (60_000, 1));
    }

    #[test]
    fn sensor_sax_emits_early_when_volatile_after_the_min_window() {
        // min 10 s, max 60 s, sensitivity 1.
        let mut s = sensor(10_000, 60_000, 1.0);
        assert_eq!(s.push(0, 20.0), None);
        assert_eq!(s.push(5_000, 20.0), None);
        assert_eq!(s.push(10_000, 20.0), None); // past the min window, but flat
                                                // [20,20,20,30]: mean 22.5, variance (3·6.25 + 56.25)/4 = 18.75, stddev 4.33 > 1,
                                                // and 15 000 − 0 ≥ 10 000 → close, with the 30 inside.
                                                // Segments (n=4, w=3 → 2,1,1): [20,20] z −0.577 'b' (≥ −0.8416 only); [20] 'b';
                                                // [30] z 7.5/4.33 = 1.732 'e' → "bbe", code 1·25 + 1·5 + 4 = 34.
        let e = s.push(15_000, 30.0).unwrap();
        assert_eq!(
            e,
            SaxEmission {
                start_ms: 0,
                end_ms: 15_000,
                count: 4,
                word: "bbe".to_string(),
                code: 34,
                stats: e.stats,
            }
        );
        // The next value opens a fresh window.
        assert_eq!(s.push(20_000, 20.0), None);
        let rest = s.flush().unwrap();
        assert_eq!((rest.start_ms, rest.count), (20_000, 1));
    }

    #[test]
    fn sensor_sax_does_not_emit_before_the_min_window_even_if_volatile() {
        let mut s = sensor(10_000, 60_000, 1.0);
        // Stddev 50 ≫ 1 from the second value on, but the span stays below 10 s.
        for (t, v) in [(0, 0.0), (1_000, 100.0), (2_000, 0.0), (9_999, 100.0)] {
            assert_eq!(s.push(t, v), None, "t {t}");
        }
        // At exactly the min window (10 000 − 0 ≥ 10 000) it closes, with all five values.
        let e = s.push(10_000, 0.0).unwrap();
        assert_eq!((e.start_ms, e.end_ms, e.count), (0, 10_000, 5));
        // [0,100,0,100,0], w=3 → [0,100] [0,100] [0]: mean 40, stddev √2400 = 48.99;
        // z-means (50−40)/48.99 = 0.204 'c', 'c', −0.816 'b' (≥ −0.8416) → "ccb".
        assert_eq!(e.word, "ccb");
    }

    #[test]
    fn sensor_sax_flush_closes_the_open_window_once() {
        let mut s = sensor(10_000, 60_000, 1.0);
        assert_eq!(s.flush(), None);
        assert_eq!(s.push(1_000, 1.0), None);
        assert_eq!(s.push(2_000, 1.5), None);
        assert_eq!(s.push(3_000, 2.0), None);
        // [1, 1.5, 2]: one value per segment, z = −1.2247 'a', 0 'c', 1.2247 'e'.
        let e = s.flush().unwrap();
        assert_eq!(
            e,
            SaxEmission {
                start_ms: 1_000,
                end_ms: 3_000,
                count: 3,
                word: "ace".to_string(),
                code: 14,
                stats: e.stats,
            }
        );
        assert_eq!(s.flush(), None);
        // State is reset: a later value starts a new window at its own time, and the old
        // values do not leak into its statistics (a lone value is flat).
        assert_eq!(s.push(100_000, 50.0), None);
        let e = s.flush().unwrap();
        assert_eq!((e.start_ms, e.count, e.word.as_str()), (100_000, 1, "ccc"));
    }

    #[test]
    fn sensor_sax_skips_and_counts_non_finite_values() {
        let mut s = sensor(0, 60_000, 1.0);
        assert_eq!(s.push(0, f64::NAN), None);
        assert_eq!(s.push(1_000, f64::INFINITY), None);
        assert_eq!(s.skipped(), 2);
        assert_eq!(s.flush(), None); // nothing was buffered
        assert_eq!(s.push(2_000, 5.0), None);
        assert_eq!(s.flush().unwrap().start_ms, 2_000);
    }

    #[test]
    fn sensor_sax_rejects_inconsistent_settings() {
        let p = SaxParams::default();
        let err = SensorSax::new(p, 70_000, 60_000, 1.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "SensorSAX window bounds are invalid (min 70000 ms, max 60000 ms); use a positive \
             max window and a min window no longer than it"
        );
        assert!(SensorSax::new(p, 0, 0, 1.0).is_err());
        assert!(SensorSax::new(p, 0, 1, -0.5).is_err());
        assert!(SensorSax::new(p, 0, 1, f64::NAN).is_err());
        assert!(SensorSax::new(p, 60_000, 60_000, 0.0).is_ok());
    }
}
