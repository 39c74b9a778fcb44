//! Offline geography: a bundled table of world cities, picked with population weights.
//!
//! The original generator looked each IP up online; offline that lookup failed and every
//! user got empty coordinates. Here users live at real places instead, with no network
//! access: each city has its coordinates (4 decimals, as geo-IP services report them) and
//! its approximate metropolitan population in thousands, used as its weight. The table and
//! the pick are deterministic, so seeded output is the same on every machine.

use rand::Rng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;

/// A city users can live in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct City {
    pub name: &'static str,
    pub country: &'static str,
    pub lat: f64,
    pub lng: f64,
    /// Metropolitan population, thousands (approximate): the pick weight.
    pub population_k: u32,
}

const fn city(
    name: &'static str,
    country: &'static str,
    lat: f64,
    lng: f64,
    population_k: u32,
) -> City {
    City {
        name,
        country,
        lat,
        lng,
        population_k,
    }
}

/// The bundled cities.
pub const CITIES: &[City] = &[
    city("Tokyo", "JP", 35.6895, 139.6917, 37_400),
    city("Delhi", "IN", 28.6139, 77.2090, 32_900),
    city("Shanghai", "CN", 31.2304, 121.4737, 29_200),
    city("Dhaka", "BD", 23.8103, 90.4125, 23_200),
    city("Sao Paulo", "BR", -23.5505, -46.6333, 22_600),
    city("Cairo", "EG", 30.0444, 31.2357, 22_200),
    city("Mexico City", "MX", 19.4326, -99.1332, 22_300),
    city("Beijing", "CN", 39.9042, 116.4074, 21_800),
    city("Mumbai", "IN", 19.0760, 72.8777, 21_300),
    city("Osaka", "JP", 34.6937, 135.5023, 19_000),
    city("Chongqing", "CN", 29.4316, 106.9123, 17_300),
    city("Karachi", "PK", 24.8607, 67.0011, 17_200),
    city("Kinshasa", "CD", -4.4419, 15.2663, 16_300),
    city("Lagos", "NG", 6.5244, 3.3792, 15_900),
    city("Istanbul", "TR", 41.0082, 28.9784, 15_800),
    city("Buenos Aires", "AR", -34.6037, -58.3816, 15_400),
    city("Kolkata", "IN", 22.5726, 88.3639, 15_300),
    city("Manila", "PH", 14.5995, 120.9842, 14_700),
    city("Guangzhou", "CN", 23.1291, 113.2644, 14_300),
    city("Tianjin", "CN", 39.3434, 117.3616, 14_000),
    city("Lahore", "PK", 31.5204, 74.3587, 13_900),
    city("Rio de Janeiro", "BR", -22.9068, -43.1729, 13_700),
    city("Bangalore", "IN", 12.9716, 77.5946, 13_600),
    city("Shenzhen", "CN", 22.5431, 114.0579, 13_100),
    city("Moscow", "RU", 55.7558, 37.6173, 12_700),
    city("Chennai", "IN", 13.0827, 80.2707, 12_000),
    city("Bogota", "CO", 4.7110, -74.0721, 11_500),
    city("Paris", "FR", 48.8566, 2.3522, 11_200),
    city("Jakarta", "ID", -6.2088, 106.8456, 11_200),
    city("Lima", "PE", -12.0464, -77.0428, 11_200),
    city("Bangkok", "TH", 13.7563, 100.5018, 11_100),
    city("Hyderabad", "IN", 17.3850, 78.4867, 10_800),
    city("Seoul", "KR", 37.5665, 126.9780, 10_000),
    city("Nagoya", "JP", 35.1815, 136.9066, 9_500),
    city("London", "GB", 51.5074, -0.1278, 9_600),
    city("Chengdu", "CN", 30.5728, 104.0668, 9_500),
    city("Tehran", "IR", 35.6892, 51.3890, 9_500),
    city("Ho Chi Minh City", "VN", 10.8231, 106.6297, 9_300),
    city("Luanda", "AO", -8.8390, 13.2894, 9_000),
    city("Nanjing", "CN", 32.0603, 118.7969, 9_400),
    city("Wuhan", "CN", 30.5928, 114.3055, 8_600),
    city("Ahmedabad", "IN", 23.0225, 72.5714, 8_600),
    city("Kuala Lumpur", "MY", 3.1390, 101.6869, 8_400),
    city("Xi'an", "CN", 34.3416, 108.9398, 8_300),
    city("Hong Kong", "HK", 22.3193, 114.1694, 7_600),
    city("Hangzhou", "CN", 30.2741, 120.1551, 8_200),
    city("Dongguan", "CN", 23.0207, 113.7518, 7_700),
    city("Foshan", "CN", 23.0215, 113.1214, 7_500),
    city("Riyadh", "SA", 24.7136, 46.6753, 7_700),
    city("Baghdad", "IQ", 33.3152, 44.3661, 7_700),
    city("Santiago", "CL", -33.4489, -70.6693, 6_900),
    city("Surat", "IN", 21.1702, 72.8311, 7_800),
    city("Madrid", "ES", 40.4168, -3.7038, 6_700),
    city("Pune", "IN", 18.5204, 73.8567, 7_100),
    city("Houston", "US", 29.7604, -95.3698, 7_300),
    city("Dallas", "US", 32.7767, -96.7970, 7_900),
    city("Toronto", "CA", 43.6532, -79.3832, 6_700),
    city("Dar es Salaam", "TZ", -6.7924, 39.2083, 7_400),
    city("Miami", "US", 25.7617, -80.1918, 6_200),
    city("Belo Horizonte", "BR", -19.9167, -43.9345, 6_200),
    city("Singapore", "SG", 1.3521, 103.8198, 5_900),
    city("Philadelphia", "US", 39.9526, -75.1652, 6_200),
    city("Atlanta", "US", 33.7490, -84.3880, 6_300),
    city("Fukuoka", "JP", 33.5904, 130.4017, 5_500),
    city("Khartoum", "SD", 15.5007, 32.5599, 6_200),
    city("Barcelona", "ES", 41.3851, 2.1734, 5_700),
    city("Johannesburg", "ZA", -26.2041, 28.0473, 6_200),
    city("Saint Petersburg", "RU", 59.9311, 30.3609, 5_600),
    city("Washington", "US", 38.9072, -77.0369, 6_300),
    city("Yangon", "MM", 16.8409, 96.1735, 5_600),
    city("Alexandria", "EG", 31.2001, 29.9187, 5_600),
    city("Guadalajara", "MX", 20.6597, -103.3496, 5_300),
    city("Ankara", "TR", 39.9334, 32.8597, 5_300),
    city("Chicago", "US", 41.8781, -87.6298, 9_400),
    city("New York", "US", 40.7128, -74.0060, 19_500),
    city("Los Angeles", "US", 34.0522, -118.2437, 12_800),
    city("San Francisco", "US", 37.7749, -122.4194, 4_600),
    city("Boston", "US", 42.3601, -71.0589, 4_900),
    city("Phoenix", "US", 33.4484, -112.0740, 5_000),
    city("Seattle", "US", 47.6062, -122.3321, 4_000),
    city("Denver", "US", 39.7392, -104.9903, 3_000),
    city("Montreal", "CA", 45.5019, -73.5674, 4_300),
    city("Vancouver", "CA", 49.2827, -123.1207, 2_600),
    city("Monterrey", "MX", 25.6866, -100.3161, 5_300),
    city("Sydney", "AU", -33.8688, 151.2093, 5_300),
    city("Melbourne", "AU", -37.8136, 144.9631, 5_100),
    city("Brisbane", "AU", -27.4698, 153.0251, 2_600),
    city("Perth", "AU", -31.9505, 115.8605, 2_100),
    city("Auckland", "NZ", -36.8485, 174.7633, 1_700),
    city("Berlin", "DE", 52.5200, 13.4050, 3_600),
    city("Hamburg", "DE", 53.5511, 9.9937, 1_900),
    city("Munich", "DE", 48.1351, 11.5820, 1_600),
    city("Frankfurt", "DE", 50.1109, 8.6821, 800),
    city("Rome", "IT", 41.9028, 12.4964, 4_300),
    city("Milan", "IT", 45.4642, 9.1900, 3_100),
    city("Naples", "IT", 40.8518, 14.2681, 2_200),
    city("Lisbon", "PT", 38.7223, -9.1393, 2_900),
    city("Amsterdam", "NL", 52.3676, 4.9041, 1_200),
    city("Brussels", "BE", 50.8503, 4.3517, 2_100),
    city("Vienna", "AT", 48.2082, 16.3738, 1_900),
    city("Zurich", "CH", 47.3769, 8.5417, 1_400),
    city("Stockholm", "SE", 59.3293, 18.0686, 1_700),
    city("Oslo", "NO", 59.9139, 10.7522, 1_100),
    city("Copenhagen", "DK", 55.6761, 12.5683, 1_400),
    city("Helsinki", "FI", 60.1699, 24.9384, 1_300),
    city("Dublin", "IE", 53.3498, -6.2603, 1_300),
    city("Manchester", "GB", 53.4808, -2.2426, 2_800),
    city("Warsaw", "PL", 52.2297, 21.0122, 1_800),
    city("Prague", "CZ", 50.0755, 14.4378, 1_300),
    city("Budapest", "HU", 47.4979, 19.0402, 1_800),
    city("Bucharest", "RO", 44.4268, 26.1025, 1_800),
    city("Athens", "GR", 37.9838, 23.7275, 3_200),
    city("Kyiv", "UA", 50.4501, 30.5234, 3_000),
    city("Tel Aviv", "IL", 32.0853, 34.7818, 4_200),
    city("Dubai", "AE", 25.2048, 55.2708, 3_600),
    city("Casablanca", "MA", 33.5731, -7.5898, 3_800),
    city("Nairobi", "KE", -1.2921, 36.8219, 5_100),
    city("Addis Ababa", "ET", 8.9806, 38.7578, 5_500),
    city("Accra", "GH", 5.6037, -0.1870, 2_600),
    city("Cape Town", "ZA", -33.9249, 18.4241, 4_800),
    city("Taipei", "TW", 25.0330, 121.5654, 7_000),
    city("Hanoi", "VN", 21.0278, 105.8342, 5_100),
    city("Caracas", "VE", 10.4806, -66.9036, 2_900),
    city("Quito", "EC", -0.1807, -78.4678, 1_900),
    city("Montevideo", "UY", -34.9011, -56.1645, 1_800),
    city("Havana", "CU", 23.1136, -82.3666, 2_100),
    city("Reykjavik", "IS", 64.1466, -21.9426, 240),
];

/// Picks cities with probability proportional to population (rand's `WeightedIndex`).
#[derive(Debug, Clone)]
pub struct CityPicker {
    weights: WeightedIndex<u32>,
}

impl CityPicker {
    /// A picker over [`CITIES`]; fails only if the table had no positive weight.
    pub fn new() -> Result<Self, rand::distr::weighted::Error> {
        let weights = WeightedIndex::new(CITIES.iter().map(|c| c.population_k))?;
        Ok(CityPicker { weights })
    }

    /// A city, drawn with population weights.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> &'static City {
        &CITIES[self.weights.sample(rng)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_at_least_100_valid_distinct_cities() {
        assert!(CITIES.len() >= 100, "{}", CITIES.len());
        let mut names: Vec<_> = CITIES.iter().map(|c| (c.name, c.country)).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CITIES.len(), "duplicate city");
        for c in CITIES {
            assert!(
                (-90.0..=90.0).contains(&c.lat) && (-180.0..=180.0).contains(&c.lng),
                "{c:?}"
            );
            assert!(c.lat != 0.0 && c.lng != 0.0, "{c:?} would read as falsy");
            assert!(c.population_k > 0, "{c:?}");
        }
    }

    #[test]
    fn picks_follow_population() {
        use rand::SeedableRng;
        let picker = CityPicker::new().unwrap();
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(1);
        let total: u64 = CITIES.iter().map(|c| u64::from(c.population_k)).sum();
        let draws = 200_000;
        let mut tokyo = 0;
        for _ in 0..draws {
            if picker.pick(&mut rng).name == "Tokyo" {
                tokyo += 1;
            }
        }
        let expected = draws as f64 * f64::from(CITIES[0].population_k) / total as f64;
        assert!(
            (tokyo as f64 - expected).abs() < 5.0 * expected.sqrt(),
            "tokyo {tokyo}, expected {expected:.0}"
        );
    }
}
