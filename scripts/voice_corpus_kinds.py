"""More call kinds for the voice training corpus (scripts/make_voice_corpus.py), as tables.

Each kind is a list of slots; a call takes one alternative from every slot in order
(an empty alternative leaves the slot out), then fills the ``{placeholders}`` from the
vocabularies below. Scam kinds marked subtle avoid the obvious words (gift card,
one-time code, arrest, wire transfer…): the money or the secret is asked for in plain
words. The benign kinds are legitimate calls that share the scam vocabulary (a bank's
fraud team, a courier, an accountant, IT, a relative borrowing the car, a raffle win…),
so no single word can decide.

Written for training only; the evaluation calls (data/voice/eval/calls.txt) are
written separately and never read here.
"""

from __future__ import annotations

import random

VOCAB: dict[str, list[str]] = {
    "first": ["Dave", "Karen", "Luis", "Mei", "Hannah", "Ahmed", "Brian", "Sofia", "Ian", "Tasha", "Pete", "Joy",
              "Derek", "Fatima", "Connor", "Wendy", "Raj", "Elena", "Colin", "Bea"],
    "bank": ["Northbridge Bank", "your bank", "the building society", "Union Savings", "Metro Credit Union",
             "Summit Bank", "the card issuer"],
    "amount": ["two hundred and fifty", "seven hundred", "one thousand nine hundred", "three thousand", "four hundred",
               "eleven hundred", "five thousand", "ninety nine", "sixty", "two thousand four hundred"],
    "small": ["one ninety nine", "two fifty", "three pounds", "four dollars", "a couple of dollars", "one twenty"],
    "city": ["Manchester", "Lisbon", "Toronto", "Lagos", "Dublin", "Austin", "Glasgow", "Cardiff", "Bristol"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend", "tomorrow"],
    "time": ["half past nine", "ten fifteen", "quarter to three", "after lunch", "around six", "first thing"],
    "relative": ["your grandson", "your daughter", "your nephew", "your son", "your niece"],
    "store": ["the corner shop", "the supermarket", "the petrol station", "the chemist", "the newsagent"],
    "agency": ["the revenue service", "the pensions office", "the benefits agency", "the court service",
               "the immigration department", "the licensing authority"],
    "company": ["Brightwave Broadband", "the phone company", "your energy supplier", "the streaming service",
                "the software firm", "your mobile network"],
}


def fill(r: random.Random, text: str) -> str:
    """Replace every ``{key}`` with a random word of its vocabulary."""
    while "{" in text:
        start = text.index("{")
        end = text.index("}", start)
        text = text[:start] + r.choice(VOCAB[text[start + 1:end]]) + text[end + 1:]
    return text


def compose(r: random.Random, slots: list[list[str]]) -> str:
    return " ".join(fill(r, r.choice(slot)) for slot in slots if slot).replace("  ", " ").strip()


# --- scams with the usual words ---------------------------------------------------------

SCAM_KINDS: dict[str, list[list[str]]] = {
    "safe_account": [
        ["Hello, I'm with the fraud investigations unit at {bank}.", "This is a security officer from {bank}.",
         "Hi, it's {first} from {bank}, the fraud desk."],
        ["Your account has been compromised by someone inside the branch.", "Criminals have got hold of your details.",
         "We've traced an attack on your savings."],
        ["You need to move your money to a safe account that we have opened for you.",
         "Transfer the full balance to the secure holding account I'll give you.",
         "Please send your savings to a protected account today."],
        ["Do not tell the staff at the branch, they may be involved.", "Don't discuss this with anyone.", ""],
        ["It has to be done right now.", "We have maybe an hour.", ""],
    ],
    "courier_cash": [
        ["Hello, this is detective {first} from the police fraud squad.", "I'm calling from the police about your bank card."],
        ["Your card has been cloned and used in {city}.", "A cashier at your bank is stealing from customers."],
        ["We need your help as evidence. A courier will collect your card and your PIN in an envelope.",
         "Withdraw {amount} in cash, a courier will come and collect it as evidence."],
        ["Keep this confidential, the investigation is secret.", "Do not tell your family, it could ruin the case."],
    ],
    "romance": [
        ["Hello my darling, I miss you so much.", "Hi sweetheart, it's me, I'm so glad you picked up.",
         "Hey beautiful, I couldn't stop thinking about you."],
        ["I'm stuck overseas and my bank has frozen my account.", "My contract on the ship pays next month but I'm stranded.",
         "There's a problem with my inheritance, the lawyer needs a fee."],
        ["Could you send me {amount} by Western Union, just until I'm home?",
         "I need {amount} in gift cards to pay the customs fee on my gold.",
         "Please wire {amount} to my agent so I can fly to you."],
        ["Don't tell your kids, they won't understand us.", "Keep this between us, my love.", ""],
    ],
    "job_fee": [
        ["Congratulations, you've been selected for the work from home position.",
         "Hi, I'm a recruiter, your profile matched our online tasks job.",
         "Hello, we offer remote jobs paying up to five hundred a day."],
        ["Before you start there's a registration fee of {amount}.",
         "You need to buy a starter kit for {amount}, refunded with your first salary.",
         "To unlock the tasks you deposit {amount} in crypto first."],
        ["Payment must be made today with prepaid cards.", "Send it in Bitcoin to the company wallet.",
         "It's guaranteed, you'll earn it back triple."],
    ],
    "rental_deposit": [
        ["Hi, about the apartment you enquired about, it's still available.",
         "Hello, I'm the owner of the flat in {city} you saw online."],
        ["I'm abroad so I can't show it, but I'll post you the keys.", "Lots of people want it, so I need a deposit now."],
        ["Send the deposit of {amount} by wire transfer to hold it.", "Pay {amount} through Western Union and it's yours."],
        ["Don't tell the agency, I'm renting it privately.", "This offer only lasts today.", ""],
    ],
    "medicare_id": [
        ["Hello, this is Medicare calling about your new benefits card.",
         "I'm calling from the social security administration about your number.",
         "This is the health insurance marketplace with an important update."],
        ["Your benefits will be suspended unless you verify your identity.",
         "Your number was used in illegal activity and will be blocked."],
        ["Please confirm your social security number and date of birth.",
         "Read me your account number and your bank details so the card is sent.",
         "Give me your card number and the security code on the back."],
        ["You must do this immediately.", "This is your final notice.", ""],
    ],
    "invoice_redirect": [
        ["Hi, it's {first} from accounts at your supplier.", "Hello, this is the chief executive, I need something urgent.",
         "This is the finance director, are you alone?"],
        ["Our bank details have changed, please pay the invoice to the new account.",
         "I need an urgent wire transfer of {amount} thousand for a confidential deal.",
         "Please buy ten Amazon gift cards for a client, I'll reimburse you."],
        ["It's confidential, don't discuss it with the team.", "Skip the usual approval, there's no time.",
         "Send me the codes on the back as soon as you can."],
    ],
    "recovery": [
        ["Hello, we are a fund recovery agency.", "I'm calling from a legal firm that recovers scam losses."],
        ["We have located the money you lost to the investment scam.", "Your lost crypto can be returned to you."],
        ["There is a legal fee of {amount} to release it, paid in Bitcoin.",
         "You need to pay the processing fee by wire transfer first."],
        ["It's guaranteed, we have a one hundred percent success rate.", "Act now, the case closes this week."],
    ],
    "grant_fee": [
        ["Congratulations, you qualify for a government grant of {amount} thousand.",
         "Hello, you've been approved for a free energy rebate."],
        ["To release the grant you pay a small processing fee first.", "There's a one time fee of {amount} to register."],
        ["You can pay with a prepaid debit card or iTunes cards.", "Pay it by wire transfer today and the money is yours."],
        ["Don't tell anyone, the list is confidential.", "Only today, the program is closing.", ""],
    ],
    "sim_swap": [
        ["Hi, it's your mobile network, we're upgrading your SIM card.", "Hello, this is {company} security."],
        ["You'll get a verification code by text, read it to me to complete the upgrade.",
         "Tell me the one time passcode we just sent and your account PIN.",
         "I need the security code from the message to keep your number active."],
        ["If you don't, your line will be disconnected today.", "Otherwise your service will be cut off.", ""],
    ],
}

# --- scams that avoid the usual words ---------------------------------------------------

SUBTLE_SCAM_KINDS: dict[str, list[list[str]]] = {
    "subtle_bank_numbers": [
        ["Hi, it's {first} from the customer team at {bank}.", "Hello there, I'm phoning from {bank}, nothing serious.",
         "Afternoon, this is the help team that looks after your account."],
        ["We just need to check it's really you on the line.", "There's a small mismatch on your profile.",
         "We've seen a payment we weren't sure about."],
        ["A message will land on your phone in a second, just read me what it says.",
         "You'll get some digits sent through, say them back to me and that's us done.",
         "Could you tell me what appears in the text we're sending, that confirms it's you."],
        ["Won't take a minute.", "Then you're all sorted.", ""],
    ],
    "subtle_move_money": [
        ["Hello, calling from {bank}, there's been some worrying activity.", "Hi, it's your account manager, {first}."],
        ["Somebody has your details, so we're setting you up with a fresh account.",
         "Your current account isn't safe anymore, I'm afraid."],
        ["Just send your balance across to the new details I'll read out, from your app.",
         "Move everything over tonight and I'll switch it back once it's sorted.",
         "If the app asks why you're paying, just pick paying a friend."],
        ["Best not to mention it to the branch, it slows things down.", "It's easier if it stays between the two of us.", ""],
    ],
    "subtle_family": [
        ["Hi Mum, it's me, this is my new number.", "Dad, it's me, I dropped my phone in the bath.",
         "Hi Nan, it's your favourite, I'm on a mate's phone."],
        ["I'm in a bit of a pickle, I've got a bill that has to be paid today.",
         "My card won't work with the new phone yet and the landlord wants paying.",
         "I'm stuck and I need to borrow some money quickly."],
        ["Could you send {amount} to the account I'll message you? It's my friend's.",
         "Can you pay it for me, I'll send you the details, I'll pay you back Friday.",
         "Just pop {amount} over to this account and I'll sort you out next week."],
        ["Don't ring my old number, it's broken.", "Please don't mention it to anyone, I'm embarrassed.", ""],
    ],
    "subtle_vouchers": [
        ["Hi, it's {first}, your manager, I'm stuck in a meeting.", "Hello love, it's the landlord's office.",
         "Hi, it's your neighbour's son, sorry to bother you."],
        ["Could you nip to {store} and pick up some of those store vouchers for me?",
         "I need you to grab a few shop top up cards on your way, four of them.",
         "Would you get some prepaid vouchers from the till, I'll settle up later."],
        ["Then just send me a picture of the numbers on them.", "Then text me the long numbers off the back.",
         "Once you have them, read me the numbers."],
        ["Keep it quiet, it's a surprise.", "No need to mention it to anyone.", ""],
    ],
    "subtle_officials": [
        ["Hello, this is {agency}, about your file.", "Hi, it's {first} calling on behalf of {agency}."],
        ["There's an amount outstanding from a couple of years back.", "You missed a date we wrote to you about.",
         "There's a problem with your paperwork that needs settling."],
        ["If it's settled today over the phone it goes no further.",
         "I can take it now, I just need the long number on your card and the three on the back.",
         "The quickest way is a payment this afternoon, I'll stay on the line with you."],
        ["Otherwise it goes to the magistrates next week.", "We'd rather not send anyone round.", ""],
    ],
    "subtle_helper_app": [
        ["Hi, I'm from the team that keeps your internet running.", "Hello, it's {company}, about your computer."],
        ["We've seen some odd traffic coming from your house.", "Your laptop has been flagged as sending out errors."],
        ["If you switch it on I'll walk you through a little helper program so I can take a look.",
         "I'll need to see what's on your screen for a minute, just type in the address I give you.",
         "Then open your banking so I can check nothing's gone missing."],
        ["It's all free, don't worry.", "I'll stay on the line the whole time.", ""],
    ],
    "subtle_prize_deposit": [
        ["Hello, you entered our draw at the shopping centre, and good news.",
         "Hi, you've been picked for a free holiday, seven nights."],
        ["All we need is a small holding deposit to secure the booking, {amount}.",
         "There's just an admin charge of {small}, which comes back to you on arrival."],
        ["Could I take the long number on your card?", "I can take that now over the phone.",
         "I'll text you a link, just pop your card in."],
        ["The place can't be held after today.", "Otherwise it goes to the next person on the list.", ""],
    ],
    "subtle_investment_friend": [
        ["Hey, we met in the group online, I've been meaning to call.", "Hi, it's {first}, my cousin told me about you."],
        ["I've been doing really well with a trading app my uncle runs.", "I turned a few hundred into thousands since spring."],
        ["Open an account and send a bit over, I'll do the trades for you.",
         "If you put in {amount} I can show you how it grows every day.",
         "Let me manage it for you, just transfer it to the platform."],
        ["It's an inside thing, so don't post about it.", "Not many people know, keep it quiet.", ""],
    ],
    "subtle_overpayment": [
        ["Hi, about the bike you're selling, the buyer has paid.", "Hello, I'm calling from the marketplace about your listing."],
        ["They paid too much by accident, {amount} over.", "The payment is on hold until the shipping is covered."],
        ["Send the extra back to their agent and then your money is released.",
         "You just need to forward the difference first, then it all comes through."],
        ["It has to be today though.", "That's how the buyer protection works.", ""],
    ],
    "subtle_mule": [
        ["Hi, we're hiring people to receive parcels at home and send them on.",
         "Hello, easy money opportunity, you just handle some payments for us."],
        ["Money will come into your account and you pass it on, keeping a tenth.",
         "You relabel the boxes and drop them at the post office, forty a box."],
        ["No interview, you can start tomorrow.", "Just send me your account details to get set up."],
    ],
}

# --- legitimate calls that sound like scams ---------------------------------------------

LOOKALIKE_KINDS: dict[str, list[list[str]]] = {
    "bank_fraud_team": [
        ["Hello, this is {first} from the fraud team at {bank}.", "Hi, it's the card protection service at {bank}.",
         "This is an automated fraud alert from {bank}."],
        ["We'll never ask for your PIN, your password or a code on this call.",
         "Please note we won't ask you to move money or read out any codes.", ""],
        ["We've blocked a payment of {amount} dollars to a shop in {city}. Was that you?",
         "There's a transaction we want to check. If it was you press one, if not press two.",
         "A card payment in {city} looked unusual, so we've paused it."],
        ["If it wasn't you, we'll cancel the card and post a new one.",
         "If you'd like to check this call is real, hang up and ring the number on the back of your card.",
         "You can also confirm it in the app yourself."],
        ["Thanks for your help.", "Have a good day.", ""],
    ],
    "bank_warning": [
        ["Hi, it's your local branch returning your call.", "Hello, it's {first} at {bank}, about the text you reported."],
        ["That message saying your account was locked was not from us.",
         "Scammers are sending texts pretending to be us this week."],
        ["Don't click the link, and never share the codes we send you, not even with us.",
         "We will never ask you to transfer your savings to a safe account."],
        ["Your account is fine, nothing has been taken.", "I've made a note on your file."],
    ],
    "courier": [
        ["Hi, it's the driver from the parcel company.", "Hello, this is the delivery firm about your package."],
        ["I'm outside but no one's answering.", "We tried to deliver on {day} but missed you.",
         "Your parcel from overseas has cleared customs."],
        ["I'll leave it with a neighbour and put a card through the door.",
         "You can rebook for free on our website with the reference on the card.",
         "Any import charge was already paid when you ordered, so there's nothing to pay."],
        ["Cheers.", "It should arrive {day} between ten and two.", ""],
    ],
    "accountant": [
        ["Hi, it's {first} from the accountants, about your tax return.", "Hello, this is your bookkeeper."],
        ["Your return is done and you've got a refund of {amount} coming.",
         "We're missing your pension statement before we can file.",
         "Your quarterly tax payment of {amount} is due on the seventh."],
        ["The tax office will pay it straight into your bank, nothing to do.",
         "Just upload it to the client portal when you can.",
         "Pay it the usual way on the government website."],
        ["If anyone calls demanding payment in vouchers, that's a scam, ring me.", "No rush, the deadline is next month.", ""],
    ],
    "it_policy": [
        ["Hi, it's {first} from IT.", "Morning, it's the service desk.", "Hello, IT security here."],
        ["Passwords expire on {day}, you'll be prompted to change it.",
         "We've unlocked your account, reset your password on the self service page.",
         "The security update installs overnight, you don't need to download anything."],
        ["Never tell anyone your password, IT will never ask for it.",
         "Don't read the verification code out to anyone, type it in yourself.",
         "If someone calls asking for remote access, report it to us."],
        ["Thanks.", "There's phishing training on {day}, you'll get an invite.", ""],
    ],
    "relative_car": [
        ["Hi Mum, it's me, can I borrow the car on {day}?", "Hey Grandad, it's about the car.",
         "Hi, it's your sister, any chance I can use the car?"],
        ["Mine's in the garage until {day}.", "I need to pick someone up from the airport.",
         "I scraped the door a bit last time, I'm paying to fix it."],
        ["I'll fill it up with petrol, promise.", "I'll bring it back by {time}.", "The keys are on the hook, right?"],
        ["Thanks, love you.", "See you then.", ""],
    ],
    "raffle": [
        ["Hello, it's the village hall committee, you've won the raffle!",
         "Hi, it's the school fair, your ticket was drawn.", "Congratulations, you won our radio competition."],
        ["You've won the hamper and a garden centre voucher.", "You won the bike, the kids will love it.",
         "You've won two tickets to the concert."],
        ["Pick it up at the hall any evening, there's nothing to pay.",
         "No bank details needed, it'll come by email.", "Collect it from the office on {day}."],
        ["Well done!", "Enjoy!", ""],
    ],
    "pharmacy": [
        ["Hello, it's the pharmacy on the high street.", "Hi, it's the chemist about your prescription."],
        ["Your repeat prescription is ready to collect.", "Your insurance declined the claim, so we've asked your doctor.",
         "One of the tablets is a different brand this time."],
        ["We're open till six.", "You can pay at the counter and we'll refund it later.", "The pharmacist can talk you through it."],
    ],
    "insurance_renewal": [
        ["Hello, it's your home insurer.", "Hi, it's {first} from the car insurance company."],
        ["Your policy is due for renewal on the fifteenth.", "Your policy lapsed last week."],
        ["It renews automatically, you don't need to do anything.",
         "You can renew on the website, we can't take payment on this call for security reasons.",
         "The documents are in your online account."],
        ["Have a lovely day.", "Remember you're not covered until it's renewed.", ""],
    ],
    "payroll_hr": [
        ["Hi, it's HR.", "Hello, it's payroll."],
        ["Your bank details change went through, your pay goes to the new account.",
         "We had fake emails asking people to change their payroll details."],
        ["Was it you who filled in the form?", "If you didn't ask for it, let us know today."],
    ],
    "utility_notice": [
        ["Hello, it's the electricity company.", "Hi, it's the water company."],
        ["There's a planned power cut on {day} for maintenance.", "Your bill is two months behind, the direct debit was cancelled."],
        ["There's nothing to pay on this call.", "You can set it up again online, no late fee if it's this month."],
        ["Thanks for your patience.", ""],
    ],
    "legit_tech": [
        ["Hi, the broadband company here confirming your engineer visit.", "Hello, it's the computer repair shop."],
        ["The engineer comes {day} between eight and one and will show ID.", "Your laptop's ready, we replaced the hard drive."],
        ["They never ask for payment at the door or to use your computer.", "You can pay when you collect it."],
    ],
    "family_money": [
        ["Hi Mum, it's me, from my normal phone.", "Hey Dad, quick one."],
        ["Could you lend me fifty till payday? I'll pay you back on the twentieth.",
         "Can you remind me of the password for the streaming account?",
         "Do you want to go halves on a present for Gran?"],
        ["I'll come round on Sunday.", "Thanks, love you.", ""],
    ],
    "job_interview": [
        ["Hello, it's the recruitment team at the warehouse.", "Hi, it's the hiring manager from the hospital."],
        ["We'd like to invite you to an interview on {day} at {time}.", "You've got the job, congratulations."],
        ["There's no cost to you, the training is paid.", "Bring ID for the right to work check."],
    ],
    "charity_thanks": [
        ["Hello, it's the hospice charity.", "Hi, it's the animal shelter."],
        ["We just wanted to thank you for your donation.", "Your gift paid for new equipment."],
        ["We're not asking for anything today.", "You can get updates on our website."],
    ],
    "gov_legit": [
        ["Hello, it's the tax office returning your call.", "Hi, it's the council about your permit."],
        ["The penalty was removed, you don't owe anything.", "Your permit expires at the end of the month."],
        ["You'll get a letter confirming it.", "You can renew online, it's the same price as last year."],
        ["We'd never ask you to pay over the phone with vouchers.", ""],
    ],
}

#: Small talk that makes a call longer without saying anything about its kind.
OPENERS = ["Hello?", "Hi, is that you?", "Hello, sorry, is this a good time?", "Hi there, how are you today?",
           "Yes, hello.", "Hi, can you hear me okay?", "Hello, sorry, the line's a bit bad."]
CLOSERS = ["Okay, bye now.", "Alright, take care.", "Thanks, bye.", "Speak soon.", "Okay then, bye bye.", ""]
INTERJECTIONS = ["Okay.", "Right.", "Sorry, who is this?", "Hmm.", "What do you mean?", "Oh.", "Yes.", "Uh huh.",
                 "Really?", "Hang on.", "Sorry, say that again?", "Okay, go on."]
FILLERS = ["um", "uh", "you know", "so", "like", "well", "I mean", "er"]
