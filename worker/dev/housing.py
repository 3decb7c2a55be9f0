"""A housing-price data set with a known formula, for the demo (the chapter's running example).

Named features like California housing's; the price (in $100,000s) is a
known function of them plus noise, so the demo can shift the inputs
(covariate drift: median income rising, as in the chapter's 17.7) and then
change the formula itself (concept drift: the market re-prices income and
location), and everyone can see which is which.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

OCEAN = ("<1H OCEAN", "INLAND", "NEAR OCEAN", "NEAR BAY", "ISLAND")
OCEAN_SHARES = (0.44, 0.32, 0.13, 0.10, 0.01)
FEATURES = ("median_income", "house_age", "avg_rooms", "avg_occupancy", "latitude", "ocean_proximity")


class HousingData:
    name = "generated housing data (known price formula)"
    income = "median_income"
    target = "price"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def rows(self, n: int, income_factor: float = 1.0, new_market: bool = False) -> tuple[list[dict], list[float]]:
        """``n`` districts and their prices; ``income_factor`` scales median income (covariate drift),
        ``new_market`` prices them by the changed formula (concept drift)."""
        rng = self.rng
        income = np.clip(rng.lognormal(np.log(3.5), 0.45, n), 0.5, 15.0) * income_factor
        age = rng.integers(1, 53, n).astype(float)
        rooms = np.clip(rng.normal(5.4, 1.1, n), 1.5, 12.0)
        occupancy = np.clip(rng.normal(2.9, 0.6, n), 1.0, 6.0)
        latitude = rng.uniform(32.5, 42.0, n)
        ocean = rng.choice(OCEAN, size=n, p=OCEAN_SHARES)
        premium = {"<1H OCEAN": 0.0, "INLAND": -0.6, "NEAR OCEAN": 0.2, "NEAR BAY": 0.3, "ISLAND": 1.0}
        location = np.array([premium[o] for o in ocean])
        if new_market:  # income counts for less, the coast for much more, and everything costs more
            price = 0.9 + 0.28 * income + 2.2 * location + 0.004 * age + 0.04 * (rooms - 5.4)
        else:
            price = 0.45 + 0.42 * income + location + 0.01 * age + 0.05 * (rooms - 5.4)
        price = price - 0.1 * (occupancy - 2.9) - 0.02 * (latitude - 36) + rng.normal(0, 0.35, n)
        features = [
            {
                "median_income": round(float(income[i]), 4),
                "house_age": float(age[i]),
                "avg_rooms": round(float(rooms[i]), 3),
                "avg_occupancy": round(float(occupancy[i]), 3),
                "latitude": round(float(latitude[i]), 3),
                "ocean_proximity": str(ocean[i]),
            }
            for i in range(n)
        ]
        return features, [round(float(max(p, 0.15)), 4) for p in price]

    def write_training_csv(self, path: str | Path, n: int) -> None:
        """``n`` labelled districts, one a minute up to now, for ``undertow train --time-column ts``."""
        features, prices = self.rows(n)
        _write(path, features, prices)


class CaliforniaData:
    """scikit-learn's California housing (downloaded on first use): real districts, drifted the same way."""

    name = "California housing (scikit-learn)"
    income = "MedInc"
    target = "price"

    def __init__(self, seed: int = 0):
        from sklearn.datasets import fetch_california_housing  # raises OSError (URLError) when offline

        frame = fetch_california_housing(as_frame=True).frame
        self.rng = np.random.default_rng(seed)
        self.target_values = frame.pop("MedHouseVal").to_numpy()
        self.columns = list(frame.columns)
        self.values = frame.to_numpy()

    def rows(self, n: int, income_factor: float = 1.0, new_market: bool = False) -> tuple[list[dict], list[float]]:
        pick = self.rng.integers(0, len(self.values), n)
        features = [dict(zip(self.columns, map(float, self.values[i]))) for i in pick]
        prices = self.target_values[pick].astype(float)
        for row in features:
            row["MedInc"] = round(row["MedInc"] * income_factor, 4)
        if new_market:  # the coast re-priced: districts west of -121 longitude gain 60 %
            prices = np.array([p * (1.6 if row["Longitude"] > -121 else 0.9) for p, row in zip(prices, features)])
        return features, [round(float(p), 4) for p in prices]

    def write_training_csv(self, path: str | Path, n: int) -> None:
        features, prices = self.rows(n)
        _write(path, features, prices)


def _write(path: str | Path, features: list[dict], prices: list[float]) -> None:
    now = datetime.now(UTC)
    names = list(features[0])
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, "ts", "price"])
        for i, (row, price) in enumerate(zip(features, prices)):
            ts = (now - timedelta(minutes=len(features) - i)).isoformat().replace("+00:00", "Z")
            writer.writerow([*(row[name] for name in names), ts, price])
