"""Tests of scripts/aws_prices.py against botocore's Stubber, which checks every request and
answer against the Price List API's published model (no AWS account is reachable here)."""

import json
import sys
import unittest
from decimal import Decimal
from pathlib import Path

import boto3
from botocore.stub import Stubber

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aws_prices  # noqa: E402

SEED = """{
  "providers": [
    { "name": "aws", "instance_types": [
        { "code": "g5.xlarge", "gpu_model": "A10G", "hourly_price": "1.006", "currency": "USD", "zones": ["us-east-1a"] },
        { "code": "g6.xlarge", "gpu_model": "L4", "hourly_price": "0.8048", "currency": "USD", "zones": ["us-east-1a"] }
    ] },
    { "name": "scaleway", "instance_types": [
        { "code": "L4-1-24G", "hourly_price": "0.75", "currency": "EUR" }
    ] }
  ]
}
"""


def product(usd):
    return json.dumps({
        "product": {"attributes": {"instanceType": "g5.xlarge"}},
        "terms": {"OnDemand": {"SKU.JRTCKXETXF": {"priceDimensions": {
            "SKU.JRTCKXETXF.6YS6EN2CT7": {"unit": "Hrs", "pricePerUnit": {"USD": usd}},
        }}}},
    })


class RefreshTest(unittest.TestCase):
    def test_prices_are_replaced_in_place_and_unknown_types_kept(self):
        client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
        stubber = Stubber(client)
        for code, answer in [("g5.xlarge", [product("1.0060000000")]), ("g6.xlarge", [])]:
            expected = {"ServiceCode": "AmazonEC2", "Filters": aws_prices.filters(code, "us-east-1"), "MaxResults": 10}
            stubber.add_response("get_products", {"PriceList": answer, "FormatVersion": "aws_v1"}, expected)
        with stubber:
            text, changes = aws_prices.refresh(client, SEED, "us-east-1")
        stubber.assert_no_pending_responses()
        self.assertEqual(changes, [("g5.xlarge", Decimal("1.0060000000"))])
        self.assertIn('"code": "g5.xlarge", "gpu_model": "A10G", "hourly_price": "1.006"', text)
        self.assertIn('"hourly_price": "0.8048"', text)
        self.assertIn('"hourly_price": "0.75"', text)
        json.loads(text)

    def test_a_price_of_zero_or_another_unit_is_not_a_price(self):
        zero = product("0.0000000000")
        self.assertIsNone(aws_prices.on_demand_usd([zero]))
        self.assertEqual(aws_prices.on_demand_usd([product("25.5")]), Decimal("25.5"))

    def test_every_aws_type_of_the_real_seed_can_be_repriced(self):
        text = aws_prices.SEED.read_text()
        codes = aws_prices.seed_types(text)
        self.assertGreater(len(codes), 3)
        for code in codes:
            # with_price raises unless the type's hourly_price is found exactly once.
            updated = aws_prices.with_price(text, code, Decimal("123.5"))
            self.assertEqual(updated.count('"hourly_price": "123.5"'), 1, code)


if __name__ == "__main__":
    unittest.main()
