#!/usr/bin/env python3
"""Refreshes the AWS on-demand prices in seeds/catalog.json from the AWS Price List Query API.

`make prices-aws` runs it with the project's virtual environment (boto3 comes with moto). It
needs AWS credentials allowed `pricing:GetProducts`; the Price List API answers from us-east-1
whatever region is asked about. For every AWS instance type in the seed it asks for the hourly
on-demand price of shared-tenancy Linux without pre-installed software in `--region`
(default us-east-1, the seed's reference region) and rewrites that type's `hourly_price` in
place, leaving the rest of the file as it is. The seed is the aws provider's bundled price table
(`qm-provider-aws`), and `qm seed` / `make seed` apply it to a running catalog.
"""

import argparse
import json
import re
import sys
from decimal import Decimal
from pathlib import Path

SEED = Path(__file__).resolve().parent.parent / "seeds" / "catalog.json"


def filters(instance_type, region):
    wanted = {
        "instanceType": instance_type,
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    return [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in wanted.items()]


def on_demand_usd(price_list):
    """The hourly USD price of a GetProducts answer (its PriceList entries are JSON strings)."""
    for entry in price_list:
        product = json.loads(entry)
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                if dimension.get("unit") == "Hrs":
                    price = Decimal(dimension["pricePerUnit"]["USD"])
                    if price > 0:
                        return price
    return None


def seed_types(text):
    catalog = json.loads(text)
    aws = next(provider for provider in catalog["providers"] if provider["name"] == "aws")
    return [kind["code"] for kind in aws["instance_types"]]


def with_price(text, code, price):
    """`text` with the hourly_price of type `code` replaced (one type per line in the seed)."""
    pattern = re.compile(r'("code": "' + re.escape(code) + r'"[^\n]*?"hourly_price": ")([0-9.]+)(")')
    formatted = format(price.normalize(), "f")
    updated, count = pattern.subn(lambda match: match.group(1) + formatted + match.group(3), text)
    if count != 1:
        raise ValueError(f"{code}: expected one hourly_price in the seed, found {count}")
    return updated


def refresh(client, text, region):
    changes = []
    for code in seed_types(text):
        answer = client.get_products(ServiceCode="AmazonEC2", Filters=filters(code, region), MaxResults=10)
        price = on_demand_usd(answer.get("PriceList", []))
        if price is None:
            print(f"warning: no on-demand price for {code} in {region}; kept", file=sys.stderr)
            continue
        text = with_price(text, code, price)
        changes.append((code, price))
    return text, changes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--seed", type=Path, default=SEED)
    arguments = parser.parse_args()
    import boto3

    client = boto3.client("pricing", region_name="us-east-1")
    text, changes = refresh(client, arguments.seed.read_text(), arguments.region)
    arguments.seed.write_text(text)
    for code, price in changes:
        print(f"{code}: {price} USD/h")


if __name__ == "__main__":
    main()
