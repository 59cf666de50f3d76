"""Which connections the NetworkPolicies of deploy/k8s allow (``network_paths``),
computed from the rendered objects (tests/support/k8s_check.py); tests/deploy/
test_k8s.py compares them with the intended list.
"""

from dataclasses import dataclass

from tests.support.k8s_check import CheckError, Model, Obj, match_labels, name_of, selector_matches

# Who else may be on either end of a connection: a client outside the cluster
# (or an address no selector names), the operators' namespaces, the cluster DNS.
OUTSIDE = "outside"

OTHER_NAMESPACES = ("cnpg-system", "rabbitmq-system")

KUBE_DNS = "kube-dns"

# Ports probed towards the outside (egress to an address block).
OUTSIDE_PORTS = ("TCP/25", "TCP/80", "TCP/443", "TCP/465", "TCP/587", "TCP/6443")


@dataclass(frozen=True)
class Party:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    namespace: str | None = None  # None: the deployment's own namespace
    ports: tuple[str, ...] = ()  # "TCP/5432"

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


def _parties(model: Model) -> list[Party]:
    parties = [
        Party(
            pod.name,
            tuple(sorted(pod.labels.items())),
            ports=tuple(sorted({f"TCP/{n}" for n in pod.ports.values()})),
        )
        for pod in model.pods.values()
    ]
    parties.append(Party(KUBE_DNS, (("k8s-app", "kube-dns"),), "kube-system", ("TCP/53", "UDP/53")))
    parties += [Party(f"ns:{ns}", namespace=ns) for ns in OTHER_NAMESPACES]
    parties.append(Party(OUTSIDE, namespace=OUTSIDE, ports=OUTSIDE_PORTS))
    return parties


def _peer_matches(peer: Obj, party: Party, where: str) -> bool:
    if "ipBlock" in peer:
        if peer["ipBlock"] != {"cidr": "0.0.0.0/0"}:
            raise CheckError(f"{where}: only the ipBlock 0.0.0.0/0 is understood")
        return True  # whether pod IPs fall in it depends on the plugin: assume they do
    pods = match_labels(peer.get("podSelector"), where)
    if "namespaceSelector" in peer:
        names = match_labels(peer["namespaceSelector"], where)
        if set(names) != {"kubernetes.io/metadata.name"}:
            raise CheckError(f"{where}: namespaces are selected by name only")
        in_namespace = party.namespace == names["kubernetes.io/metadata.name"]
        return in_namespace and selector_matches(pods, party.label_dict)
    return party.namespace is None and selector_matches(pods, party.label_dict)


def _rule_allows(rule: Obj, peers_key: str, other: Party, port: str, where: str) -> bool:
    ports = rule.get("ports")
    if ports:
        wanted = {f"{p.get('protocol', 'TCP')}/{p['port']}" for p in ports}
        if any(not isinstance(p["port"], int) or "endPort" in p for p in ports):
            raise CheckError(f"{where}: only numeric ports are understood")
        if port not in wanted:
            return False
    peers = rule.get(peers_key)
    return not peers or any(_peer_matches(peer, other, where) for peer in peers)


def _side_allows(policies: list[Obj], direction: str, me: Party, other: Party, port: str) -> bool:
    """Whether ``me``'s policies let the connection through on its side."""
    if me.namespace is not None:  # not ours: its namespace's policies are not in view
        return True
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    mine = [
        p
        for p in policies
        if direction in p["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(match_labels(p["spec"]["podSelector"], name_of(p)), me.label_dict)
    ]
    if not mine:
        return True
    return any(
        _rule_allows(rule, peers_key, other, port, name_of(p))
        for p in mine
        for rule in p["spec"].get(rules_key, [])
    )


def network_paths(objects: list[Obj]) -> set[tuple[str, str, str]]:
    """Every (source, destination, "PROTO/port") the NetworkPolicies allow."""
    model = Model.of(objects)
    policies = list(model.of_kind("NetworkPolicy"))
    parties = _parties(model)
    return {
        (src.name, dst.name, port)
        for src in parties
        for dst in parties
        for port in dst.ports
        if not (src.namespace is not None and dst.namespace is not None)
        and _side_allows(policies, "Egress", src, dst, port)
        and _side_allows(policies, "Ingress", dst, src, port)
    }
