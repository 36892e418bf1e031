"""Write the labelled call-transcript corpus of the voice scam model (data/voice/transcripts.jsonl).

The transcripts are composed from many sentence templates and vocabularies per call
type, scam and benign alike, with a fixed seed, so running this again writes the same
file: the call types below plus the tables of scripts/voice_corpus_kinds.py (more scam
kinds, scams that avoid the obvious words, and legitimate calls that share the scam
vocabulary: a bank's fraud team, a courier, an accountant, IT, a raffle win…). Half of
the calls are then put in spoken style (fillers, the other side's interjections, small
talk before and after), so lengths and wording vary. Each line carries a ``split``:
about a fifth (``val``) is held out from fitting, to choose the model and calibrate its
score; the independent evaluation set (data/voice/eval/calls.txt) is separate.

    .venv/bin/python scripts/make_voice_corpus.py [--out data/voice/transcripts.jsonl]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path

import voice_corpus_kinds as kinds

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "data" / "voice" / "transcripts.jsonl"
SEED = 20261122
PER_CLASS = 520
HOLDOUT_FRACTION = 0.2

FIRST = ["Daniel", "Maria", "Kevin", "Sarah", "James", "Priya", "Michael", "Linda", "Robert", "Angela",
         "Tom", "Grace", "Steven", "Olivia", "Carlos", "Nina", "Peter", "Rachel", "Omar", "Helen"]
LAST = ["Miller", "Johnson", "Parker", "Nguyen", "Brooks", "Walker", "Harris", "Lopez", "Bennett", "Reed"]
BANKS = ["First National Bank", "Chase", "Wells Fargo", "Bank of America", "Citibank", "your credit union",
         "Capital One", "Harbor Savings Bank", "the bank"]
AMOUNTS = ["four hundred and ninety nine dollars", "twelve hundred dollars", "two thousand dollars",
           "eight hundred and fifty dollars", "three hundred dollars", "one thousand five hundred dollars",
           "nine hundred and ninety dollars", "six hundred dollars"]
CITIES = ["Miami", "Phoenix", "Denver", "Chicago", "Houston", "Atlanta", "Seattle", "Boston", "Dallas", "Portland"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
TIMES = ["nine thirty", "ten in the morning", "two o'clock", "three fifteen", "four thirty", "eleven", "noon"]

OTP = ["the one time password", "the six digit verification code", "the security code we just texted you",
       "the one time passcode", "the verification code on your screen", "the code we sent to your phone",
       "your PIN number", "the confirmation code from the text message"]
URGENCY = ["This has to be done immediately.", "You need to act right now.", "Please do this within the next hour.",
           "This is your final notice.", "We only have a few minutes to stop this.", "Do not hang up the phone.",
           "If you wait, it will be too late.", "This must be resolved today.", "Time is running out.",
           "You have twenty four hours to respond."]
GIFT = ["Google Play gift cards", "Apple gift cards", "iTunes cards", "Steam cards", "Target gift cards",
        "prepaid Visa cards", "Amazon gift cards", "eBay gift cards"]
PAYMENT = ["a wire transfer", "Bitcoin", "Western Union", "a MoneyGram transfer", "Zelle", "Cash App",
           "a prepaid debit card", "cryptocurrency"]
AGENCY = ["the Internal Revenue Service", "the Social Security Administration", "the IRS", "Medicare",
          "the Department of Homeland Security", "the county sheriff's office", "the federal tax office",
          "US Customs and Border Protection"]
TECH = ["Microsoft", "Apple support", "Windows technical support", "Amazon security", "your internet provider",
        "the Norton help desk"]
APPS = ["AnyDesk", "TeamViewer", "a remote access app", "our support tool", "a screen sharing program"]
THREATS = ["a police officer will come to your house", "you will be arrested today", "a warrant will be issued",
           "we will file a lawsuit against you", "your assets will be frozen", "you could face jail time",
           "legal action will begin this afternoon"]
SECRECY = ["Do not tell anyone at the store what the cards are for.", "Keep this between us for now.",
           "Please don't discuss this with your bank.", "Do not tell your family about this call.",
           "This matter is confidential, so keep it to yourself.", ""]
PII = ["your social security number", "your date of birth and card number", "your online banking password",
       "your full card number and the expiry date", "your account number and PIN", "your mother's maiden name"]


def _name(r: random.Random) -> str:
    return f"{r.choice(FIRST)} {r.choice(LAST)}"


def _pick(r: random.Random, *options: str) -> str:
    return r.choice(options)


def _join(r: random.Random, parts: list[str]) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


# --- scam call types ---------------------------------------------------------------

def bank_otp(r: random.Random) -> str:
    return _join(r, [
        _pick(r, f"Hello, this is {_name(r)} calling from the fraud department at {r.choice(BANKS)}.",
              f"Good afternoon, I'm calling from {r.choice(BANKS)} security team.",
              f"Hi, this is an urgent call from {r.choice(BANKS)} about your debit card."),
        _pick(r, f"We detected a suspicious charge of {r.choice(AMOUNTS)} in {r.choice(CITIES)}.",
              "Someone is trying to log in to your account from another device.",
              f"There is an unauthorized transfer of {r.choice(AMOUNTS)} waiting to go out."),
        _pick(r, f"To cancel it, please read me {r.choice(OTP)}.",
              f"To verify that you are the account holder, tell me {r.choice(OTP)}.",
              f"I just need {r.choice(OTP)} to block the transaction.",
              f"Please confirm {r.choice(PII)} and {r.choice(OTP)}."),
        r.choice(URGENCY),
        _pick(r, "Otherwise your account will be locked.", "Otherwise the money will be gone.", ""),
    ])


def tax_threat(r: random.Random) -> str:
    return _join(r, [
        _pick(r, f"This is officer {_name(r)} from {r.choice(AGENCY)}.",
              f"This message is from {r.choice(AGENCY)} regarding a legal case against you.",
              f"My name is agent {r.choice(LAST)} with {r.choice(AGENCY)}."),
        _pick(r, f"Our records show you owe {r.choice(AMOUNTS)} in back taxes.",
              "There is a warrant for your arrest because of tax fraud.",
              "Your tax return was flagged for serious errors and penalties."),
        _pick(r, f"If you do not pay today, {r.choice(THREATS)}.",
              f"Unless this is settled now, {r.choice(THREATS)}."),
        _pick(r, f"You can pay the penalty with {r.choice(PAYMENT)}.", f"Payment must be made in {r.choice(GIFT)}.",
              f"We accept {r.choice(PAYMENT)} only."),
        r.choice(URGENCY), r.choice(SECRECY),
    ])


def gift_card(r: random.Random) -> str:
    who = _pick(r, "your grandson", "your nephew", "your granddaughter", "your son")
    return _join(r, [
        _pick(r, "Grandma, it's me, please don't be mad.", f"Hello, I'm a lawyer representing {who}.",
              f"This is {_name(r)}, your company director, I need a quick favor.",
              "Hi, this is the manager from the utility company."),
        _pick(r, f"{who.capitalize()} was in a car accident in {r.choice(CITIES)} and needs bail money.",
              "I'm stuck in a meeting and need to send gifts to some clients.",
              "Your payment did not go through and your service will be cut off."),
        _pick(r, f"Go to the store and buy {r.choice(['three', 'four', 'five', 'six'])} {r.choice(GIFT)} of two hundred dollars each.",
              f"I need you to pick up {r.choice(GIFT)} right away.",
              f"The only way to pay is with {r.choice(GIFT)}."),
        _pick(r, "Then scratch off the back and read me the numbers.", "Send me a photo of the codes on the back.",
              "Read me the card numbers and the PIN on the back."),
        r.choice(SECRECY), r.choice(URGENCY),
    ])


def tech_support(r: random.Random) -> str:
    return _join(r, [
        _pick(r, f"Hello, this is {_name(r)} from {r.choice(TECH)}.", f"We are calling from {r.choice(TECH)}.",
              f"This is the security department of {r.choice(TECH)}."),
        _pick(r, "Your computer is sending us error messages and has a dangerous virus.",
              "Hackers have gained access to your computer and your bank details.",
              "Your license has expired and your computer will stop working."),
        _pick(r, f"Please download {r.choice(APPS)} so our technician can get remote access and fix it.",
              f"I need you to install {r.choice(APPS)} and give me the access code.",
              f"Open your browser and install {r.choice(APPS)} now."),
        _pick(r, f"There is a one time fee of {r.choice(AMOUNTS)} for the protection plan.",
              "After that, log in to your online banking so I can issue a refund.",
              f"You will need to pay {r.choice(AMOUNTS)} with {r.choice(PAYMENT)}."),
        r.choice(URGENCY),
    ])


def suspension(r: random.Random) -> str:
    thing = _pick(r, "your social security number", "your bank account", "your Amazon account", "your credit card",
                  "your Medicare card", "your driver's license", "your PayPal account")
    return _join(r, [
        _pick(r, f"This is an automated message from {_pick(r, *AGENCY, *BANKS)}.",
              f"Hello, this is {_name(r)} from the account protection department.",
              "Attention, this is an important notice."),
        _pick(r, f"{thing.capitalize()} has been suspended due to suspicious activity.",
              f"{thing.capitalize()} will be suspended within twenty four hours.",
              f"We have frozen {thing} because it was used in illegal activity.",
              f"{thing.capitalize()} has been locked after fraudulent use in {r.choice(CITIES)}."),
        _pick(r, f"To reactivate it, confirm {r.choice(PII)}.", "Press one to speak with an agent now.",
              f"To avoid suspension, verify {r.choice(PII)} with me.",
              f"To restore access, read me {r.choice(OTP)}."),
        r.choice(URGENCY),
        _pick(r, f"Failure to respond means {r.choice(THREATS)}.", ""),
    ])


def prize(r: random.Random) -> str:
    what = _pick(r, "a brand new car", "fifty thousand dollars", "a free cruise", "the national sweepstakes",
                 "a lottery prize of two million dollars", "a luxury vacation")
    return _join(r, [
        _pick(r, f"Congratulations! You have won {what}.", f"Great news, you were selected as the winner of {what}.",
              f"Hello, this is {_name(r)} from the prize center, you are our lucky winner."),
        _pick(r, f"To claim your prize, you only need to pay a processing fee of {r.choice(AMOUNTS)}.",
              f"Before we release it, there is a tax fee you must pay with {r.choice(PAYMENT)}.",
              f"Just send the delivery fee in {r.choice(GIFT)}."),
        _pick(r, f"I will also need {r.choice(PII)} to send the money.", "Please give me your bank details for the deposit.",
              ""),
        r.choice(URGENCY), r.choice(SECRECY),
    ])


def investment(r: random.Random) -> str:
    return _join(r, [
        _pick(r, f"Hi, this is {_name(r)}, a senior advisor at a crypto trading platform.",
              "Hello, I'm calling about an exclusive investment opportunity.",
              f"My name is {_name(r)} and I help people grow their retirement savings."),
        _pick(r, "Our clients get guaranteed returns of thirty percent every month.",
              "This is a risk free investment that doubles your money in weeks.",
              "Our trading robot never loses money."),
        _pick(r, f"You just need to transfer your savings with {r.choice(PAYMENT)} to our secure wallet.",
              f"Send {r.choice(AMOUNTS)} in Bitcoin to get started today.",
              f"Install {r.choice(APPS)} and I will set up the account for you."),
        _pick(r, "This offer is only open today.", r.choice(URGENCY)), r.choice(SECRECY),
    ])


def utility_cutoff(r: random.Random) -> str:
    return _join(r, [
        _pick(r, "This is the disconnection department of your electric company.",
              f"Hello, this is {_name(r)} from the water and power utility.",
              "This is a final notice from your gas company."),
        _pick(r, f"Your account is past due by {r.choice(AMOUNTS)}.", "We never received your last two payments."),
        _pick(r, "A technician is on the way to shut off your power in thirty minutes.",
              "Your service will be disconnected within the hour."),
        _pick(r, f"To stop it, pay now with {r.choice(GIFT)}.", f"The only accepted payment is {r.choice(PAYMENT)}.",
              f"Read me {r.choice(PII)} to process the payment."),
        r.choice(URGENCY),
    ])


def customs_parcel(r: random.Random) -> str:
    return _join(r, [
        _pick(r, "This is the customs department calling about a parcel in your name.",
              f"Hello, this is {_name(r)} from the international shipping center.",
              "Your package has been held at the border."),
        _pick(r, "We found illegal items inside it and your identity was used for money laundering.",
              f"There is an unpaid import fee of {r.choice(AMOUNTS)}.",
              "The package contains documents linked to your bank account."),
        _pick(r, f"To clear your name, transfer your funds to a safe account with {r.choice(PAYMENT)}.",
              f"Pay the fee now with {r.choice(GIFT)} or the parcel will be destroyed.",
              f"Please confirm {r.choice(PII)} so we can verify your identity."),
        _pick(r, f"Otherwise {r.choice(THREATS)}.", r.choice(URGENCY)), r.choice(SECRECY),
    ])


def refund_scam(r: random.Random) -> str:
    return _join(r, [
        _pick(r, f"Hello, this is {_name(r)} from the refund department.",
              f"I'm calling from {r.choice(TECH)} about your subscription."),
        _pick(r, f"You were charged {r.choice(AMOUNTS)} by mistake for a renewal.",
              "We owe you a refund for an overpayment on your account."),
        _pick(r, f"To process the refund, I need remote access to your computer through {r.choice(APPS)}.",
              "Log in to your bank account while I connect to your screen.",
              f"Just read me {r.choice(OTP)} so I can send the money back."),
        _pick(r, f"Oh no, I sent too much, you need to return the difference with {r.choice(GIFT)}.",
              r.choice(URGENCY)),
    ])


SCAM_TYPES: dict[str, Callable[[random.Random], str]] = {
    "bank_otp": bank_otp, "tax_threat": tax_threat, "gift_card": gift_card, "tech_support": tech_support,
    "account_suspension": suspension, "prize": prize, "investment": investment, "utility_cutoff": utility_cutoff,
    "customs_parcel": customs_parcel, "refund": refund_scam,
    **{name: partial(kinds.compose, slots=slots) for name, slots in kinds.SCAM_KINDS.items()},
    **{name: partial(kinds.compose, slots=slots) for name, slots in kinds.SUBTLE_SCAM_KINDS.items()},
}


# --- benign call types ---------------------------------------------------------------

def appointment(r: random.Random) -> str:
    where = _pick(r, "Doctor Patel's office", "Bright Smile Dental", "the eye clinic", "the physical therapy center",
                  "Riverside Family Medicine", "the veterinary hospital")
    return _join(r, [
        _pick(r, f"Hi, this is {r.choice(FIRST)} from {where}.", f"Hello, this is a reminder call from {where}."),
        f"You have an appointment on {r.choice(DAYS)} at {r.choice(TIMES)}.",
        _pick(r, "Please arrive ten minutes early and bring your insurance card.",
              "If you need to reschedule, just give us a call back.", "Remember not to eat anything after midnight."),
        _pick(r, "Have a great day.", "See you then, bye.", "Thank you."),
    ])


def delivery(r: random.Random) -> str:
    return _join(r, [
        _pick(r, f"Hi, this is {r.choice(FIRST)}, your delivery driver.", "Hello, this is the furniture store."),
        _pick(r, f"Your order will arrive on {r.choice(DAYS)} between {r.choice(TIMES)} and five.",
              "I'm outside your building with a package but the gate is locked.",
              "Your new sofa is scheduled for delivery tomorrow morning."),
        _pick(r, "Can you buzz me in or should I leave it with the neighbor?", "Someone needs to be home to sign for it.",
              "You can track it in the app with your order number."),
        _pick(r, "Thanks.", "Talk soon.", ""),
    ])


def family_chat(r: random.Random) -> str:
    return _join(r, [
        _pick(r, "Hey mom, it's me.", f"Hi {r.choice(FIRST)}, it's {r.choice(FIRST)}.", "Hey, how are you doing?",
              "Hi grandpa, I just wanted to say hello."),
        _pick(r, f"Are we still on for dinner on {r.choice(DAYS)}?", "I finally finished the garden this weekend.",
              "The kids loved the birthday cake you made.", f"I'll be landing in {r.choice(CITIES)} around {r.choice(TIMES)}.",
              "I found that recipe you asked about."),
        _pick(r, "Let me know if you need me to bring anything.", "Call me back when you get a chance.",
              "Say hi to everyone for me.", "I'll send you some pictures tonight."),
        _pick(r, "Love you, bye.", "Okay, talk later.", "Take care."),
    ])


def work_call(r: random.Random) -> str:
    return _join(r, [
        _pick(r, f"Hi, it's {r.choice(FIRST)} from the marketing team.", f"Hey {r.choice(FIRST)}, quick question.",
              f"Hello, this is {_name(r)} from the project office."),
        _pick(r, f"Can we move our meeting to {r.choice(DAYS)} at {r.choice(TIMES)}?",
              "The client wants the slides by the end of the day, so it's a bit urgent.",
              "I reviewed the budget and it looks good.", "The server maintenance is tonight at nine."),
        _pick(r, "I'll send a calendar invite.", "Let me know what works for you.",
              "We need your numbers before the deadline tomorrow.", "No rush on the other items."),
        _pick(r, "Thanks a lot.", "Talk to you later.", "Cheers."),
    ])


def legit_bank(r: random.Random) -> str:
    bank = r.choice(BANKS)
    return _join(r, [
        _pick(r, f"Hello, this is a courtesy call from {bank}.", f"Hi, this is {_name(r)} from {bank}.",
              f"This is an automated service message from {bank}."),
        _pick(r, "Your new debit card has been mailed and should arrive within a week.",
              "Your mortgage statement is now available in online banking.",
              "We noticed you have not activated your new card yet.",
              "The branch on Main Street will have new opening hours next month."),
        _pick(r, "Remember, we will never ask you for your password or a verification code over the phone.",
              "You can activate it in the app, there's nothing you need to tell us on this call.",
              "If you have questions, call the number on the back of your card.",
              "No action is needed from you."),
        _pick(r, "Thank you for banking with us.", "Have a nice day.", "Goodbye."),
    ])


def services(r: random.Random) -> str:
    who = _pick(r, "the plumber", "the auto repair shop", "the pharmacy", "the dry cleaner", "the library",
                "the electrician", "the moving company")
    return _join(r, [
        f"Hi, this is {r.choice(FIRST)} from {who}.",
        _pick(r, "Your car is ready, we replaced the brake pads and rotated the tires.",
              "Your prescription is ready for pickup at the counter.",
              f"I can come by on {r.choice(DAYS)} to fix the leak under the sink.",
              "The book you reserved has arrived.", "Your order is ready, the total is forty two dollars.",
              f"We can start the job on {r.choice(DAYS)} at {r.choice(TIMES)}."),
        _pick(r, "You can pay when you pick it up, cash or card is fine.", "We're open until six tonight.",
              "Give me a call back to confirm the time.", "There's no charge for the estimate."),
        _pick(r, "Thanks, bye.", "Have a good one.", ""),
    ])


def school(r: random.Random) -> str:
    return _join(r, [
        _pick(r, f"Hello, this is {r.choice(FIRST)} from Lincoln Elementary School.",
              "Hi, this is coach Brooks from the soccer club.", "Good evening, this is the school district."),
        _pick(r, f"Parent teacher conferences are on {r.choice(DAYS)}.", "Practice is moved to the indoor field tomorrow.",
              "School will start two hours late because of the snow.", "Your daughter left her jacket in the classroom."),
        _pick(r, "Please sign the permission slip.", "Please bring water and a snack.", "No need to call back."),
        _pick(r, "Thank you.", "See you soon.", ""),
    ])


def reservation(r: random.Random) -> str:
    return _join(r, [
        _pick(r, "Hi, I'd like to book a table for four.", "Hello, this is the Blue Harbor restaurant.",
              "Hi, I'm calling to confirm the hotel booking."),
        _pick(r, f"It's for {r.choice(DAYS)} at seven in the evening.", "Your reservation is confirmed for two nights.",
              "We have a window table available at eight."),
        _pick(r, "Could we also get a high chair?", "Check in starts at three in the afternoon.",
              "Let us know if anyone has allergies."),
        _pick(r, "Thanks so much.", "We look forward to seeing you.", "Bye now."),
    ])


def survey_or_sales(r: random.Random) -> str:
    return _join(r, [
        _pick(r, "Hello, we're doing a short customer satisfaction survey.",
              "Hi, this is the gym, your membership renews next month.",
              "Hello, this is your insurance agent with a renewal reminder."),
        _pick(r, "It takes about two minutes and you can stop at any time.",
              "Your policy renews at the same price as last year.",
              "If you want to change your plan, you can visit us any time."),
        _pick(r, "You can also reply by email if that's easier.", "There's no need to do anything if you're happy.",
              "Feel free to think about it and call us back."),
        _pick(r, "Thank you for your time.", "Have a nice evening.", ""),
    ])


def landlord(r: random.Random) -> str:
    return _join(r, [
        _pick(r, f"Hi, this is {r.choice(FIRST)}, your building manager.", "Hello, it's your landlord."),
        _pick(r, f"The water will be turned off on {r.choice(DAYS)} morning for repairs.",
              "The elevator inspection is scheduled for next week.",
              "Rent for next month can be paid through the tenant portal as usual."),
        _pick(r, "Sorry for the inconvenience.", "Let me know if you have any questions.", "A notice is on the door."),
        _pick(r, "Thanks.", "Bye.", ""),
    ])


BENIGN_TYPES: dict[str, Callable[[random.Random], str]] = {
    "appointment": appointment, "delivery": delivery, "family": family_chat, "work": work_call,
    "bank_courtesy": legit_bank, "services": services, "school": school, "reservation": reservation,
    "survey_or_renewal": survey_or_sales, "landlord": landlord,
    **{name: partial(kinds.compose, slots=slots) for name, slots in kinds.LOOKALIKE_KINDS.items()},
}
LOOKALIKE = {"bank_courtesy", "work", *kinds.LOOKALIKE_KINDS}


def difficulty(label: str, kind: str) -> str:
    """overt / subtle scam, lookalike / plain benign call."""
    if label == "scam":
        return "subtle" if kind in kinds.SUBTLE_SCAM_KINDS else "overt"
    return "lookalike" if kind in LOOKALIKE else "plain"


def spoken(r: random.Random, text: str) -> str:
    """The call as it is spoken: fillers, the other side's interjections, small talk."""
    sentences = [s.strip() + "." if s.strip()[-1] not in ".?!" else s.strip()
                 for s in text.replace("? ", "?|").replace("! ", "!|").replace(". ", ".|").split("|") if s.strip()]
    out = [r.choice(kinds.OPENERS)] if r.random() < 0.5 else []
    for sentence in sentences:
        if r.random() < 0.3:
            sentence = f"{r.choice(kinds.FILLERS).capitalize()}, {sentence[0].lower()}{sentence[1:]}"
        if r.random() < 0.15:
            first, _, rest = sentence.partition(" ")
            first = first.rstrip(",.?!")
            sentence = f"{first}, {first.lower()} {rest}"
        out.append(sentence)
        if r.random() < 0.3:
            out.append(r.choice(kinds.INTERJECTIONS))
    out.append(r.choice(kinds.CLOSERS))
    return " ".join(p for p in out if p)


def generate(seed: int = SEED, per_class: int = PER_CLASS) -> list[dict[str, object]]:
    """The corpus, deterministic for a seed: ``per_class`` unique transcripts per label."""
    r = random.Random(seed)
    rows: list[dict[str, object]] = []
    for label, types in (("scam", SCAM_TYPES), ("benign", BENIGN_TYPES)):
        seen: set[str] = set()
        names = sorted(types)
        i = 0
        while len(seen) < per_class:
            kind = names[i % len(names)]
            i += 1
            text = " ".join(types[kind](r).split())
            if r.random() < 0.5:
                text = spoken(r, text)
            if text in seen:
                continue
            seen.add(text)
            rows.append({"label": label, "category": kind, "difficulty": difficulty(label, kind), "text": text})
    r.shuffle(rows)
    for n, row in enumerate(rows):
        digest = hashlib.sha256(f"{seed}:{row['text']}".encode()).hexdigest()
        row["id"] = f"t{n:04d}"
        row["split"] = "val" if int(digest[:8], 16) / 0xFFFFFFFF < HOLDOUT_FRACTION else "train"
    return [{k: row[k] for k in ("id", "label", "category", "difficulty", "split", "text")} for row in rows]


def main() -> None:
    """Write the corpus as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    rows = generate()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    val = sum(1 for row in rows if row["split"] == "val")
    print(f"wrote {len(rows)} transcripts ({val} held out for validation) to {args.out}")


if __name__ == "__main__":
    main()
