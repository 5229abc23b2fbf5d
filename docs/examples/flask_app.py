import os

from flask import Flask, request

from sse_notify.client import Client

app = Flask(__name__)
notify = Client(os.environ["NOTIFY_URL"], os.environ["NOTIFY_TOKEN"])  # a publisher token


@app.post("/orders/<int:order>/ship")
def ship(order: int) -> dict:
    # ... mark the order shipped in your database, then tell the customer's open tabs:
    ids = notify.publish(user=request.json["customer"], title="Your order has shipped",
                         priority="high", data={"order": order})
    return {"notification": ids[0]}
