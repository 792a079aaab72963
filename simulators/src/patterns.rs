//! Daily patterns: pure functions of the local hour that shape every generated stream.
//!
//! The curves are smooth sums of logistic steps and Gaussian bumps, chosen to look like the
//! Aarhus recordings (morning and evening rush hours, shopping-hour parking, afternoon
//! temperature peak) while staying simple enough to reason about in tests.

/// Lowest normal `avgSpeed` (km/h) outside incidents. Strictly above the congestion threshold
/// of 35 km/h, so normal traffic never meets `avgSpeed <= 35 && vehicleCount >= 10`.
pub const MIN_NORMAL_SPEED: i64 = 37;
const _: () = assert!(
    MIN_NORMAL_SPEED > 35,
    "normal traffic must stay out of congestion"
);
/// Highest normal parking occupancy outside incidents, clearly below the 0.85 margin under
/// the 0.9 "full" rule.
pub const MAX_NORMAL_OCCUPANCY: f64 = 0.80;
/// Lowest occupancy during a scripted garage-full incident.
pub const MIN_FULL_OCCUPANCY: f64 = 0.92;
/// Congested `avgSpeed` range (km/h, inclusive) during a congestion incident.
pub const CONGESTED_SPEED: (i64, i64) = (15, 30);
/// Congested `vehicleCount` range (per 5 minutes, inclusive) during a congestion incident.
pub const CONGESTED_COUNT: (i64, i64) = (15, 40);

fn gauss(x: f64, mu: f64, sigma: f64) -> f64 {
    (-(x - mu).powi(2) / (2.0 * sigma * sigma)).exp()
}

fn logistic(x: f64, at: f64, steep: f64) -> f64 {
    1.0 / (1.0 + (-(x - at) * steep).exp())
}

/// Relative traffic intensity in 0..=1 at local `hour` (0..24): quiet nights, a daytime
/// plateau and rush-hour peaks near 08:00 and 17:00 (softer at weekends).
pub fn traffic_intensity(hour: f64, weekend: bool) -> f64 {
    let daytime = logistic(hour, 6.5, 2.0) * (1.0 - logistic(hour, 21.0, 1.5));
    let (plateau, morning, evening) = if weekend {
        (0.45, 0.05, 0.15)
    } else {
        (0.40, 0.55, 0.50)
    };
    let v = 0.04
        + plateau * daytime
        + morning * gauss(hour, 8.0, 0.9)
        + evening * gauss(hour, 17.0, 1.2);
    v.clamp(0.0, 1.0)
}

/// Normal average speed for a segment with free-flow speed `free_speed` (km/h) when its
/// vehicle count is `load` times its usual peak count: speed falls as counts rise, but never
/// below [`MIN_NORMAL_SPEED`].
pub fn traffic_speed(free_speed: f64, load: f64, noise: f64) -> i64 {
    let v = free_speed * (1.0 - 0.30 * load.clamp(0.0, 1.3)) + noise;
    (v.round() as i64).max(MIN_NORMAL_SPEED)
}

/// How a garage fills during the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkingProfile {
    /// City-centre shopping: fills late morning, peaks in the afternoon, busier at weekends.
    Shopping,
    /// Office area: fills at 08:00, empties after 16:00, quiet at weekends.
    Commuter,
}

/// Normal occupancy (0..=[`MAX_NORMAL_OCCUPANCY`]) of a garage at local `hour`.
pub fn parking_occupancy(profile: ParkingProfile, hour: f64, weekend: bool) -> f64 {
    let v = match profile {
        ParkingProfile::Shopping => {
            let open = logistic(hour, 10.0, 1.5) * (1.0 - logistic(hour, 19.0, 1.2));
            0.08 + if weekend { 0.68 } else { 0.55 } * open + 0.08 * gauss(hour, 15.0, 1.5)
        }
        ParkingProfile::Commuter => {
            let work = logistic(hour, 8.0, 2.5) * (1.0 - logistic(hour, 16.5, 1.5));
            0.05 + if weekend { 0.10 } else { 0.70 } * work
        }
    };
    v.clamp(0.0, MAX_NORMAL_OCCUPANCY)
}

/// Diurnal temperature (deg C) around `mean`, coldest near 05:00 and warmest near 15:00.
pub fn temperature(mean: f64, hour: f64) -> f64 {
    mean + 5.0 * (std::f64::consts::TAU * (hour - 15.0) / 24.0).cos()
}

/// Relative humidity (%) for a temperature, higher when it is cool, kept within 30..=100.
pub fn humidity(temp: f64, mean_temp: f64) -> f64 {
    (75.0 - 3.0 * (temp - mean_temp)).clamp(30.0, 100.0)
}

/// Road-noise level (dB LAeq) for a traffic intensity.
pub fn noise_level(intensity: f64) -> f64 {
    42.0 + 24.0 * intensity.clamp(0.0, 1.0)
}

/// Air-quality index (CityPulse style) for one pollutant: a per-sensor `base`, plus a share of
/// traffic `intensity` (pollution follows traffic), plus congestion when the area is jammed.
pub fn pollution_index(base: f64, intensity: f64, congested: bool) -> f64 {
    base + 70.0 * intensity + if congested { 40.0 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rush_hours_are_the_peaks_of_a_weekday() {
        let at = |h: f64| traffic_intensity(h, false);
        assert!(at(8.0) > at(12.0) && at(17.0) > at(12.0));
        assert!(at(12.0) > 3.0 * at(3.0));
        let peak_hour = (0..24 * 60)
            .map(|m| f64::from(m) / 60.0)
            .max_by(|a, b| at(*a).total_cmp(&at(*b)))
            .unwrap_or_default();
        assert!(
            (7.5..=8.5).contains(&peak_hour) || (16.5..=17.5).contains(&peak_hour),
            "{peak_hour}"
        );
    }

    #[test]
    fn speed_falls_with_load_but_stays_above_congestion() {
        assert!(traffic_speed(80.0, 1.0, 0.0) < traffic_speed(80.0, 0.1, 0.0));
        assert_eq!(traffic_speed(50.0, 1.3, -20.0), MIN_NORMAL_SPEED);
    }

    #[test]
    fn occupancy_stays_clearly_below_full() {
        for m in 0..24 * 60 {
            let h = f64::from(m) / 60.0;
            for p in [ParkingProfile::Shopping, ParkingProfile::Commuter] {
                for w in [false, true] {
                    let o = parking_occupancy(p, h, w);
                    assert!((0.0..=MAX_NORMAL_OCCUPANCY).contains(&o));
                }
            }
        }
        assert!(parking_occupancy(ParkingProfile::Commuter, 11.0, false) > 0.6);
        assert!(parking_occupancy(ParkingProfile::Commuter, 3.0, false) < 0.1);
    }

    #[test]
    fn afternoon_is_warmer_than_dawn() {
        assert!(temperature(15.0, 15.0) - temperature(15.0, 5.0) > 9.0);
        assert!(humidity(10.0, 15.0) > humidity(20.0, 15.0));
    }
}
