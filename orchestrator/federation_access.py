"""The federation platform's access rules (NACM, RFC 8341), rewritten into its running
configuration whenever membership changes (see orchestrator/federation.py). Who sees which
charging records, disputes and ratings depends on other leaves than keys, so the platform's
access policy narrows those further (FederationPlatform.hide_others); settle is open to
members and service users, each for its own member (checked by the platform). A member writes
only its own agreement offers (offers/member-offers[member-id]); take-offer is open to
applicants too, so that the platform can tell one it is not admitted yet."""
from __future__ import annotations

from lxml import etree

from models.ns import FEDERATION
from netconf_core.ns import NACM

MODULE = "qi-federation"
ENROL_USER = "enrol"
LIVE = ("applied", "admitted", "suspended")  # statuses whose key authenticates


def access_rules(admins: list[str], memberships: dict[str, str], service_users: list[str],
                 user_applicants: list[str] = ()) -> etree._Element:
    """The platform's NACM configuration: memberships maps member-id -> status; service_users
    act for an admitted member, user_applicants applied (apply-service-user) and wait."""
    nacm = NACM.element("nacm")
    for leaf, value in (("enable-nacm", "true"), ("read-default", "deny"), ("write-default", "deny"),
                        ("exec-default", "deny")):
        NACM.sub(nacm, leaf, value)
    live = {m: s for m, s in sorted(memberships.items()) if s in LIVE}
    groups = {"admin": admins, "member": [m for m, s in live.items() if s == "admitted"],
              "applicant": [m for m, s in live.items() if s != "admitted"], "service-user": service_users,
              "enrol": [ENROL_USER], **{f"self-{m}": [m] for m in live},
              **{f"applicant-{u}": [u] for u in sorted(user_applicants)}}
    groups_element = NACM.sub(nacm, "groups")
    for name, users in groups.items():
        group = NACM.sub(groups_element, "group")
        NACM.sub(group, "name", name)
        for user in users:
            NACM.sub(group, "user-name", user)
    fed = "/qi-fed:federation"

    def rule_list(name: str, group_names: list[str], rules: list[tuple]) -> None:
        element = NACM.sub(nacm, "rule-list")
        NACM.sub(element, "name", name)
        for group in group_names:
            NACM.sub(element, "group", group)
        for i, (action, ops, module, kind, value) in enumerate(rules):
            rule = NACM.sub(element, "rule")
            NACM.sub(rule, "name", f"{name}-{i}")
            NACM.sub(rule, "module-name", module)
            if kind == "path":
                etree.SubElement(rule, NACM("path"), nsmap={"qi-fed": FEDERATION}).text = value
            elif kind == "rpc":
                NACM.sub(rule, "rpc-name", value)
            NACM.sub(rule, "access-operations", ops)
            NACM.sub(rule, "action", action)

    rule_list("admin", ["admin"], [("permit", "*", "*", None, None)])
    for member, status in live.items():
        own = [("permit", "read", MODULE, "path", f"{fed}/qi-fed:members/qi-fed:member[qi-fed:member-id='{member}']")]
        if status == "admitted":
            own += [("permit", "create update delete", MODULE, "path",
                     f"{fed}/qi-fed:advertisements/qi-fed:advertisement[qi-fed:member-id='{member}']"),
                    ("permit", "create update delete", MODULE, "path",
                     f"{fed}/qi-fed:members/qi-fed:member[qi-fed:member-id='{member}']/qi-fed:service-user"),
                    ("permit", "create update delete", MODULE, "path",
                     f"{fed}/qi-fed:offers/qi-fed:member-offers[qi-fed:member-id='{member}']")]
        rule_list(f"self-{member}", [f"self-{member}"], own)
    base_operations = [("permit", "exec", "ietf-netconf", "rpc", op)
                       for op in ("get", "get-config", "edit-config", "validate", "commit", "close-session")]
    for user in sorted(user_applicants):  # its own application only, until its member admits it
        rule_list(f"applicant-{user}", [f"applicant-{user}"], [
            *[("permit", "exec", "ietf-netconf", "rpc", op) for op in ("get", "close-session")],
            ("permit", "read", MODULE, "path", f"{fed}/qi-fed:service-users/qi-fed:service-user"
                                               f"[qi-fed:user-name='{user}']"),
            *[("deny", "read", MODULE, "path", f"{fed}/qi-fed:{part}")
              for part in ("service-users/qi-fed:service-user", "members", "agreements", "offers",
                           "advertisements", "services", "charging", "ratings")],
            ("permit", "read", MODULE, "path", fed)])
    rule_list("member-operations", ["member"], [("permit", "exec", MODULE, "rpc", "withdraw"),
                                                ("permit", "exec", MODULE, "rpc", "report-delivery"),
                                                ("permit", "exec", MODULE, "rpc", "admit-service-user"),
                                                ("permit", "exec", MODULE, "rpc", "move-sae"),
                                                ("permit", "exec", MODULE, "rpc", "take-offer")])
    # Both follow their services' status changes (the platform shows each only its own).
    rule_list("subscribers", ["member", "service-user"],
              [("permit", "exec", "notifications", "rpc", "create-subscription")])
    rule_list("participants", ["member", "service-user"], [
        ("permit", "exec", MODULE, "rpc", "settle"),  # its own member's only: checked by the platform
        ("deny", "exec", MODULE, "rpc", "*"),
        ("deny", "read", "ietf-netconf-acm", None, None),
        ("deny", "read", MODULE, "path", f"{fed}/qi-fed:members/qi-fed:member/qi-fed:agent"),
        ("deny", "read", MODULE, "path", f"{fed}/qi-fed:members/qi-fed:member/qi-fed:service-user"),
        ("permit", "create update delete", MODULE, "path", f"{fed}/qi-fed:services"),
        *base_operations,
        ("permit", "read", "*", None, None),
    ])
    rule_list("applicants", ["applicant"], [
        ("permit", "exec", MODULE, "rpc", "withdraw"),
        ("permit", "exec", MODULE, "rpc", "take-offer"),  # refused by the platform, saying why
        *[("permit", "exec", "ietf-netconf", "rpc", op) for op in ("get", "get-config", "close-session")],
        *[("deny", "read", MODULE, "path", f"{fed}/qi-fed:{part}")
          for part in ("members/qi-fed:member", "agreements", "offers", "advertisements", "services",
                       "charging", "ratings")],
        ("permit", "read", MODULE, "path", fed),
    ])
    rule_list("enrol", ["enrol"], [("permit", "exec", MODULE, "rpc", "apply-membership"),
                                   ("permit", "exec", MODULE, "rpc", "apply-service-user")])
    return nacm
